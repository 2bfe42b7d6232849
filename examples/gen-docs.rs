//! Generates the man page and the shell completions from the clap
//! definition the binary parses with (`config::sources::command`, which
//! includes the `RINGSERVE_*` environment variables), so they cannot drift
//! from `--help`.
//!
//! `cargo run --example gen-docs -- [OUT_DIR]` (default `target/gen-docs`)
//! writes `ringserve.1` and completions for bash, zsh, fish and elvish;
//! `bash ci/gen-docs.sh` runs it and checks the result.

use std::path::PathBuf;

use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("target/gen-docs"), PathBuf::from);
    std::fs::create_dir_all(&out)?;
    let command = ringserve::config::sources::command();

    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    std::fs::write(out.join("ringserve.1"), page)?;

    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::Elvish] {
        let path = clap_complete::generate_to(shell, &mut command.clone(), "ringserve", &out)?;
        println!("{}", path.display());
    }
    println!("{}", out.join("ringserve.1").display());
    Ok(())
}
