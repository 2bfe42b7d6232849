//! Where settings come from, and which wins: a flag on the command line,
//! then an environment variable `RINGSERVE_<FLAG>`, then the `[server]`
//! table of the `--config` file, then the default.
//!
//! Steps, in order ([`Cli::from_all_sources`]):
//! 1. [`command`]: the clap definition of [`Cli`] with an environment
//!    variable added to every option but the hidden measurement switches
//!    and test hooks (`--max-body` ← `RINGSERVE_MAX_BODY`;
//!    switches take `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off`), so no
//!    option can be forgotten; clap itself ranks flag over environment over
//!    default;
//! 2. parse the command line and the environment;
//! 3. if a config file is named, turn each key of its `[server]` table into
//!    the flag of the same name (`max_body = "1M"` → `--max-body=1M`), for
//!    the options that step 2 did not set, and parse again: the file's values
//!    go through the very parsers and checks the command line's do;
//! 4. settle the two settings with two spellings: the directory (`ROOT` or
//!    `--root`) and the address (`--listen` or `-p`): the higher layer wins,
//!    and both in one layer is a contradiction, reported as such.
//!
//! [`Cli::print_config`] renders the result as a `[server]` table (so it can
//! be pasted into a config file), each line noting where its value came from.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use super::Cli;

/// The prefix of every environment variable the server reads.
pub const ENV_PREFIX: &str = "RINGSERVE_";

/// Options that are not settings: they take no environment variable and no
/// config file key.
const NOT_SETTINGS: [&str; 3] = ["help", "version", "print-config"];

/// Why the settings could not be gathered.
#[derive(Debug)]
pub enum SettingsError {
    /// From clap: a bad flag or value, or `--help`/`--version` (which clap
    /// prints and exits for, with `exit`).
    Clap(clap::Error),
    /// A problem with the config file or a contradiction: one line.
    Message(String),
}

impl From<clap::Error> for SettingsError {
    fn from(error: clap::Error) -> Self {
        SettingsError::Clap(error)
    }
}

/// Where a setting's value came from, highest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Layer {
    Default,
    File,
    Environment,
    CommandLine,
}

/// The clap definition with `RINGSERVE_*` environment variables: what the
/// binary parses with, and what the man page and completions are built from.
pub fn command() -> clap::Command {
    Cli::command().mut_args(|arg| {
        let Some(long) = arg.get_long() else {
            return arg;
        };
        // Hidden options are measurement switches and test hooks: only
        // ever given on purpose, on the command line.
        if NOT_SETTINGS.contains(&long) || arg.is_hide_set() {
            return arg;
        }
        let variable = format!("{ENV_PREFIX}{}", long.to_ascii_uppercase().replace('-', "_"));
        let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let arg = arg.env(variable);
        if is_switch {
            arg.value_parser(BoolishValueParser::new())
        } else {
            arg
        }
    })
}

/// The layers of the settings once gathered: the final matches, and which
/// option ids the config file supplied.
struct Gathered {
    matches: ArgMatches,
    first: ArgMatches,
    from_file: BTreeSet<String>,
}

impl Gathered {
    fn layer(&self, id: &str) -> Layer {
        if self.from_file.contains(id) {
            return Layer::File;
        }
        match self.first.value_source(id) {
            Some(ValueSource::CommandLine) => Layer::CommandLine,
            Some(ValueSource::EnvVariable) => Layer::Environment,
            _ => Layer::Default,
        }
    }
}

impl Cli {
    /// The settings from the command line `args` (the program name first),
    /// the environment and the config file, merged (see the module doc).
    pub fn from_all_sources(args: Vec<OsString>) -> Result<Cli, SettingsError> {
        let gathered = gather(args)?;
        let mut cli = Cli::from_arg_matches(&gathered.matches)?;
        settle_root(&mut cli, &gathered)?;
        settle_address(&mut cli, &gathered)?;
        cli.sources = describe_sources(&gathered);
        cli.matches = Some(gathered.matches);
        Ok(cli)
    }

    /// The settings in effect as a `[server]` table for a config file, each
    /// line with where its value came from; unset options as comments.
    pub fn print_config(&self) -> String {
        let source = |id: &str| {
            self.sources
                .iter()
                .find(|(key, _)| key == id)
                .map_or("default", |(_, from)| from.as_str())
        };
        let mut text = String::from("[server]\n");
        let matches = self.matches.as_ref();
        for arg in command().get_arguments() {
            let (Some(long), id) = (arg.get_long(), arg.get_id().as_str()) else {
                continue;
            };
            if arg.is_hide_set() || NOT_SETTINGS.contains(&long) || matches!(long, "port" | "config") {
                continue;
            }
            let key = long.replace('-', "_");
            let value = match long {
                "root" => Some(toml_string(&self.root().display().to_string())),
                "listen" => Some(toml_string(&self.listen_addr().to_string())),
                _ => matches.and_then(|m| render_value(m, id, arg)),
            };
            let from = match long {
                "root" => source("root"),
                "listen" => source("listen"),
                _ => source(id),
            };
            match value {
                Some(value) => {
                    let _ = writeln!(text, "{key} = {value}  # {from}");
                }
                None => {
                    let _ = writeln!(text, "# {key} = (not set)");
                }
            }
        }
        if let Some(file) = &self.config {
            let _ = writeln!(text, "# config file: {}", file.display());
        }
        text
    }
}

/// Steps 2 and 3.
fn gather(args: Vec<OsString>) -> Result<Gathered, SettingsError> {
    let first = command().try_get_matches_from(&args)?;
    let Some(path) = first.get_one::<std::path::PathBuf>("config").cloned() else {
        return Ok(Gathered {
            matches: first.clone(),
            first,
            from_file: BTreeSet::new(),
        });
    };
    let (file_args, from_file) = file_arguments(&path, &first)?;
    let mut merged = Vec::with_capacity(args.len() + file_args.len());
    let mut args = args.into_iter();
    merged.extend(args.next());
    // Before the user's own arguments, so a `--` among them stays last.
    merged.extend(file_args);
    merged.extend(args);
    let matches = command().try_get_matches_from(&merged).map_err(|e| {
        let text = e.to_string();
        let line = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ");
        SettingsError::Message(format!("in {}: {line}", path.display()))
    })?;
    Ok(Gathered {
        matches,
        first,
        from_file,
    })
}

/// Step 3: the flags the file's `[server]` table stands for, for options
/// that neither the command line nor the environment set; and their ids.
fn file_arguments(
    path: &Path,
    first: &ArgMatches,
) -> Result<(Vec<OsString>, BTreeSet<String>), SettingsError> {
    let fail = |why: String| SettingsError::Message(format!("in {}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| {
        SettingsError::Message(format!("cannot read the config file {}: {e}", path.display()))
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| fail(e.message().to_owned()))?;
    let Some(server) = table.get("server") else {
        return Ok((Vec::new(), BTreeSet::new()));
    };
    let server = server
        .as_table()
        .ok_or_else(|| fail("`server` must be a table: [server]".to_owned()))?;
    let command = command();
    let set_above = |id: &str| {
        matches!(
            first.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    let address_set_above = set_above("listen") || set_above("port");
    let root_set_above = set_above("root") || set_above("root_arg");
    let mut args = Vec::new();
    let mut from_file = BTreeSet::new();
    for (key, value) in server {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|arg| {
                arg.get_long() == Some(long.as_str())
                    && !NOT_SETTINGS.contains(&long.as_str())
                    && !arg.is_hide_set()
            })
            .filter(|_| long != "config")
            .ok_or_else(|| {
                fail(format!(
                    "unknown setting `{key}` in [server] (see ringserve --help)"
                ))
            })?;
        let id = arg.get_id().as_str();
        let skip = match id {
            "listen" | "port" => address_set_above,
            "root" => root_set_above,
            _ => set_above(id),
        };
        if skip {
            continue;
        }
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        let values: Vec<&toml::Value> = match value {
            toml::Value::Array(items) if repeatable => items.iter().collect(),
            toml::Value::Array(_) => return Err(fail(format!("`{key}` takes one value, not a list"))),
            other => vec![other],
        };
        for value in values {
            let text = match value {
                toml::Value::Boolean(on) if switch => {
                    if *on {
                        args.push(OsString::from(format!("--{long}")));
                    }
                    continue;
                }
                _ if switch => return Err(fail(format!("`{key}` is a switch: write {key} = true"))),
                toml::Value::String(text) => text.clone(),
                toml::Value::Integer(number) => number.to_string(),
                toml::Value::Boolean(on) => on.to_string(),
                _ => return Err(fail(format!("`{key}`: write a string or a number"))),
            };
            args.push(OsString::from(format!("--{long}={text}")));
        }
        from_file.insert(id.to_owned());
    }
    if from_file.contains("listen") && from_file.contains("port") {
        return Err(fail("both `listen` and `port` are set: give one".to_owned()));
    }
    Ok((args, from_file))
}

/// Step 4 for the directory: `ROOT` and `--root` on one command line must not
/// disagree; otherwise the positional `ROOT` (a flag) wins over lower layers.
fn settle_root(cli: &mut Cli, gathered: &Gathered) -> Result<(), SettingsError> {
    if let Some(positional) = cli.root_arg.take() {
        if gathered.layer("root") == Layer::CommandLine && positional != cli.root {
            return Err(SettingsError::Message(format!(
                "the directory is given twice ({} and --root {}): give one",
                positional.display(),
                cli.root.display()
            )));
        }
        cli.root = positional;
    }
    Ok(())
}

/// Step 4 for the address: `--listen` and `-p` name the same thing.
fn settle_address(cli: &mut Cli, gathered: &Gathered) -> Result<(), SettingsError> {
    let (listen, port) = (gathered.layer("listen"), gathered.layer("port"));
    if cli.listen.is_some() && cli.port.is_some() {
        if listen == port {
            let place = match listen {
                Layer::CommandLine => "on the command line",
                Layer::Environment => "in the environment (RINGSERVE_LISTEN and RINGSERVE_PORT)",
                Layer::File => "in the config file",
                Layer::Default => "by default",
            };
            return Err(SettingsError::Message(format!(
                "--listen and --port are both given {place}: give one (--port P means --listen 127.0.0.1:P)"
            )));
        }
        if listen > port {
            cli.port = None;
        } else {
            cli.listen = None;
        }
    }
    Ok(())
}

/// For `--print-config`: where each option's value came from.
fn describe_sources(gathered: &Gathered) -> Vec<(String, String)> {
    let mut sources = Vec::new();
    for arg in command().get_arguments() {
        let id = arg.get_id().as_str();
        let layer = gathered.layer(id);
        let text = match layer {
            Layer::CommandLine => "command line".to_owned(),
            Layer::Environment => match arg.get_env() {
                Some(name) => format!("environment {}", name.to_string_lossy()),
                None => "environment".to_owned(),
            },
            Layer::File => "config file".to_owned(),
            Layer::Default => continue,
        };
        sources.push((id.to_owned(), text));
    }
    let address = [
        ("listen", gathered.layer("listen")),
        ("port", gathered.layer("port")),
    ]
    .into_iter()
    .max_by_key(|(_, layer)| *layer)
    .map(|(id, _)| id);
    if let Some(id) = address
        && let Some(from) = sources
            .iter()
            .find(|(key, _)| key == id)
            .map(|(_, from)| from.clone())
    {
        sources.retain(|(key, _)| key != "listen");
        sources.push(("listen".to_owned(), from));
    }
    if gathered.first.value_source("root_arg") == Some(ValueSource::CommandLine) {
        sources.retain(|(key, _)| key != "root");
        sources.push(("root".to_owned(), "command line".to_owned()));
    }
    sources
}

fn render_value(matches: &ArgMatches, id: &str, arg: &clap::Arg) -> Option<String> {
    let raw: Vec<String> = matches
        .get_raw(id)?
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    Some(match arg.get_action() {
        ArgAction::SetTrue => {
            let on = matches.get_flag(id);
            on.to_string()
        }
        ArgAction::Append => {
            let items: Vec<String> = raw.iter().map(|item| toml_scalar(item)).collect();
            format!("[{}]", items.join(", "))
        }
        _ => toml_scalar(raw.first()?),
    })
}

/// A number as a TOML integer, anything else as a TOML string.
fn toml_scalar(text: &str) -> String {
    if text.parse::<i64>().is_ok() {
        text.to_owned()
    } else {
        toml_string(text)
    }
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}
