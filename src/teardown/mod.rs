pub mod devnode;
pub mod dm;
pub mod loopdev;
pub mod md;
pub mod nbd;
pub mod swap;
