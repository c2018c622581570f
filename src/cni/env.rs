//! The `CNI_*` environment variables: which are required for which command,
//! and the checks on the container ID and the interface name.

use std::ffi::OsString;
use std::time::Duration;

use super::error::{code, CniError};

/// The CNI commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Add a container to the network.
    Add,
    /// Remove a container from the network.
    Del,
    /// Check a container's networking.
    Check,
    /// Report the supported versions.
    Version,
    /// Report whether the plugin can serve ADDs (1.1.0).
    Status,
    /// Remove what belongs to attachments that are gone (1.1.0).
    Gc,
}

impl Command {
    /// The command as `CNI_COMMAND` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    fn parse(s: &str) -> Option<Command> {
        [
            Command::Add,
            Command::Del,
            Command::Check,
            Command::Version,
            Command::Status,
            Command::Gc,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// The delegate timeout when `WEFT_CNI_DELEGATE_TIMEOUT` is not set.
pub const DEFAULT_DELEGATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Names of the variables weft-cni reads.
const VARS: [&str; 7] = [
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
    "WEFT_CNI_DELEGATE_TIMEOUT",
];

/// The plugin's environment, as given (nothing checked yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Option<String>,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: Option<String>,
    /// `CNI_PATH`.
    pub path: Option<String>,
    /// `WEFT_CNI_DELEGATE_TIMEOUT` (seconds): how long a delegate may run.
    pub delegate_timeout: Option<String>,
    /// Variables that were set but not valid UTF-8.
    pub not_utf8: Vec<String>,
}

/// The checked environment of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The command.
    pub command: Command,
    /// The container ID (ADD, DEL, CHECK), a safe file name.
    pub container_id: String,
    /// The netns path (ADD, CHECK; may be empty for DEL).
    pub netns: String,
    /// The interface name (ADD, DEL, CHECK).
    pub ifname: String,
    /// `CNI_ARGS`, passed on.
    pub args: String,
    /// `CNI_PATH` (required for ADD, DEL, CHECK, GC).
    pub path: String,
    /// How long a delegate may run.
    pub delegate_timeout: Duration,
}

impl CniEnv {
    /// Reads the process environment.
    pub fn from_process() -> CniEnv {
        CniEnv::from_vars(VARS.iter().filter_map(|k| Some((*k, std::env::var_os(k)?))))
    }

    /// Builds the environment from `(name, value)` pairs (unknown names are ignored).
    pub fn from_vars<K: AsRef<str>>(vars: impl IntoIterator<Item = (K, OsString)>) -> CniEnv {
        let mut env = CniEnv::default();
        for (k, v) in vars {
            let k = k.as_ref();
            let Ok(v) = v.into_string() else {
                env.not_utf8.push(k.to_owned());
                continue;
            };
            let slot = match k {
                "CNI_COMMAND" => &mut env.command,
                "CNI_CONTAINERID" => &mut env.container_id,
                "CNI_NETNS" => &mut env.netns,
                "CNI_IFNAME" => &mut env.ifname,
                "CNI_ARGS" => &mut env.args,
                "CNI_PATH" => &mut env.path,
                "WEFT_CNI_DELEGATE_TIMEOUT" => &mut env.delegate_timeout,
                _ => continue,
            };
            *slot = Some(v);
        }
        env
    }

    /// The command (`CNI_COMMAND`), checked.
    pub fn command(&self) -> Result<Command, CniError> {
        if self.not_utf8.iter().any(|k| k == "CNI_COMMAND") {
            return Err(CniError::env("CNI_COMMAND is not valid UTF-8"));
        }
        let c = self.command.as_deref().unwrap_or("");
        if c.is_empty() {
            return Err(CniError::env(
                "required environment variable CNI_COMMAND is missing",
            ));
        }
        Command::parse(c).ok_or_else(|| {
            CniError::env(format!(
                "CNI_COMMAND {c:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
            ))
        })
    }

    /// Checks what `command` needs: the container ID (a safe file name), the
    /// netns, the interface name and `CNI_PATH`.
    pub fn check(&self, command: Command) -> Result<Checked, CniError> {
        if let Some(k) = self.not_utf8.first() {
            return Err(CniError::env(format!("{k} is not valid UTF-8")));
        }
        let (id, netns, ifname, path) = match command {
            Command::Add | Command::Check => (true, true, true, true),
            Command::Del => (true, false, true, true),
            Command::Gc => (false, false, false, true),
            Command::Status | Command::Version => (false, false, false, false),
        };
        let get = |name: &str, value: &Option<String>, required: bool| {
            let v = value.clone().unwrap_or_default();
            if required && v.is_empty() {
                return Err(CniError::env(format!(
                    "required environment variable {name} is missing (CNI_COMMAND={})",
                    command.as_str()
                )));
            }
            Ok(v)
        };
        let container_id = get("CNI_CONTAINERID", &self.container_id, id)?;
        if id {
            check_container_id(&container_id)?;
        }
        let ifname = get("CNI_IFNAME", &self.ifname, ifname)?;
        if !ifname.is_empty() {
            check_ifname(&ifname)?;
        }
        Ok(Checked {
            command,
            container_id,
            netns: get("CNI_NETNS", &self.netns, netns)?,
            ifname,
            args: self.args.clone().unwrap_or_default(),
            path: get("CNI_PATH", &self.path, path)?,
            delegate_timeout: self.timeout()?,
        })
    }

    /// `WEFT_CNI_DELEGATE_TIMEOUT`, or the default. Runtimes hand plugins
    /// their whole environment, so a bad value there must not make any
    /// command fail (a failed DEL leaks the pod's address and rules): it
    /// falls back to the default with a warning on stderr.
    fn timeout(&self) -> Result<Duration, CniError> {
        let Some(s) = self.delegate_timeout.as_deref().filter(|s| !s.is_empty()) else {
            return Ok(DEFAULT_DELEGATE_TIMEOUT);
        };
        Ok(parse_timeout(s).unwrap_or_else(|| {
            eprintln!(
                "weft-cni: WEFT_CNI_DELEGATE_TIMEOUT {s:?} is not a number of seconds \
                 (0 < t <= 86400); using {}s",
                DEFAULT_DELEGATE_TIMEOUT.as_secs()
            );
            DEFAULT_DELEGATE_TIMEOUT
        }))
    }
}

/// A delegate timeout in seconds (0 < t ≤ 86400), if `s` is one.
pub fn parse_timeout(s: &str) -> Option<Duration> {
    s.parse::<f64>()
        .ok()
        .filter(|t| t.is_finite() && *t > 0.0 && *t <= 86_400.0)
        .map(Duration::from_secs_f64)
}

/// Longest accepted container ID (a file name: NAME_MAX).
pub const MAX_CONTAINER_ID: usize = 255;

/// A container ID must match `[A-Za-z0-9][A-Za-z0-9_.\-]*` (at most 255
/// characters): it becomes a file name under `dataDir`, so this is what keeps
/// path traversal out.
pub fn check_container_id(id: &str) -> Result<(), CniError> {
    if is_valid_container_id(id) {
        return Ok(());
    }
    Err(CniError::env(format!(
        "CNI_CONTAINERID {:?} is invalid: it must match [A-Za-z0-9][A-Za-z0-9_.-]* (at most {MAX_CONTAINER_ID} characters)",
        truncate(id, 80)
    )))
}

/// Whether `id` is a valid container ID (see [`check_container_id`]).
pub fn is_valid_container_id(id: &str) -> bool {
    is_safe_name(id) && id.len() <= MAX_CONTAINER_ID
}

/// `[A-Za-z0-9][A-Za-z0-9_.\-]*`: the spec's rule for container IDs and
/// network names; never `.`, `..` or anything with a `/`.
pub fn is_safe_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// An interface name: not empty, not `.`/`..`, shorter than 16 bytes, no
/// `/`, `:` or whitespace (the spec's rule).
pub fn check_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() < 16
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        return Ok(());
    }
    Err(CniError::new(
        code::INVALID_ENVIRONMENT,
        format!(
            "CNI_IFNAME {:?} is not a valid interface name (1-15 bytes, no '/', ':' or whitespace, not '.' or '..')",
            truncate(name, 40)
        ),
    ))
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}
