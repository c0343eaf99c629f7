//! `/proc/swaps` parser: a header line, then `Filename Type Size Used Priority` columns.
//! The file name is escaped like mountinfo paths.

use super::mountinfo::unescape;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Swap {
    pub path: String,
    /// `partition` or `file`.
    pub kind: String,
}

pub fn parse(text: &str) -> Vec<Swap> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let path = unescape(fields.next()?);
            let kind = fields.next().unwrap_or("unknown").to_string();
            Some(Swap { path, kind })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_partition_and_file_with_escapes() {
        let text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                    /dev/dm-2                               partition\t1048572\t\t0\t\t-2\n\
                    /oldroot/swap\\040file                    file\t\t65532\t\t0\t\t-3\n";
        let s = parse(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].path, "/dev/dm-2");
        assert_eq!(s[0].kind, "partition");
        assert_eq!(s[1].path, "/oldroot/swap file");
        assert_eq!(s[1].kind, "file");
    }

    #[test]
    fn header_only_means_no_swap() {
        assert!(parse("Filename Type Size Used Priority\n").is_empty());
        assert!(parse("").is_empty());
    }
}
