//! exitrd: one binary, several names. As `shutdown` (the name systemd executes in
//! /run/initramfs) it is the PID-1 shutdown runtime; as `exitrd` it takes subcommands.

use clap::Parser;
use exitrd::{cli, runtime};
use std::path::Path;

fn refuse_unless_pid1() {
    if std::process::id() != 1 {
        eprintln!(
            "exitrd: shutdown mode runs only as PID 1 inside systemd's exitrd pivot \
             (it would end every process and power off); refusing"
        );
        std::process::exit(2);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let called_as = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if called_as == "shutdown" {
        refuse_unless_pid1();
        runtime::run(&args[1..]);
    }
    // A command-line tool piped into `head` should end quietly, not panic on EPIPE.
    // SAFETY: setting a signal disposition to its default runs no code of ours.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigDfl,
        );
    }
    let cli = cli::Cli::parse();
    let code = match cli.command {
        cli::Command::Plan {
            root,
            json,
            exitrd_view,
        } => cli::plan_command(&root, json, exitrd_view),
        cli::Command::Status {
            json,
            repair,
            pivot_only,
            boot_report,
            root,
        } => {
            if pivot_only {
                cli::pivot_status_command(&root, repair)
            } else {
                cli::status_command(&root, json, repair, boot_report)
            }
        }
        cli::Command::Prepare {
            payload,
            from,
            target,
        } => cli::prepare_command(payload.as_deref(), from.as_deref(), &target),
        cli::Command::CheckHook { root, hooks } => cli::check_hook_command(&root, &hooks),
        cli::Command::Shutdown { args } => {
            refuse_unless_pid1();
            runtime::run(&args)
        }
    };
    std::process::exit(code);
}
