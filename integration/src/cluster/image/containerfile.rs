//! The runtime (last) stage of `manifests/Containerfile`, read so that the
//! image can be made without a container build: its Debian suite, the
//! packages it installs, the files it copies and its entry point.
//!
//! Only the instructions that stage uses are understood (`FROM`, `RUN` with
//! `apt-get update`, `apt-get install` and the removal of apt's lists,
//! `COPY`, `ENTRYPOINT` in JSON form); anything else is an error, so a
//! change to the Containerfile cannot be silently left out of the image.

use anyhow::{bail, Context, Result};

/// Where the build stage's binaries are (its `WORKDIR` is `/src`).
const BUILD_OUTPUT_DIR: &str = "/src/target/release/";

/// What the runtime stage of the Containerfile is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RuntimeStage {
    /// The Debian suite of the base image (`bookworm`).
    pub suite: String,
    /// The packages `apt-get install` installs, in order.
    pub packages: Vec<String>,
    /// The `COPY` instructions, in order.
    pub copies: Vec<CopyFile>,
    /// The `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
}

/// One `COPY` of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CopyFile {
    /// Where the file comes from.
    pub source: CopySource,
    /// The absolute path in the image.
    pub dest: String,
}

/// Where a copied file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CopySource {
    /// A binary of the build stage (`/src/target/release/<name>`): on the
    /// host, `<bin_dir>/<name>`.
    BuildOutput(String),
    /// A path relative to the build context, the workspace root.
    Context(String),
}

/// One instruction: its line number (of its first line), its keyword in
/// upper case and its arguments with line continuations joined.
#[derive(Debug)]
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

/// Reads the runtime (last) stage of the Containerfile `text`.
pub(super) fn runtime_stage(text: &str) -> Result<RuntimeStage> {
    let instructions = instructions(text);
    let from = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .context("the Containerfile has no FROM")?;
    let suite = debian_suite(&instructions[from])?;
    let mut packages = Vec::new();
    let mut copies = Vec::new();
    let mut entrypoint = None;
    for instruction in &instructions[from + 1..] {
        let in_line = || format!("line {}: {}", instruction.line, instruction.keyword);
        match instruction.keyword.as_str() {
            "RUN" => packages.extend(run_packages(&instruction.args).with_context(in_line)?),
            "COPY" => copies.push(copy_file(&instruction.args).with_context(in_line)?),
            "ENTRYPOINT" => entrypoint = Some(exec_form(&instruction.args).with_context(in_line)?),
            other => bail!(
                "line {}: {other} is not understood in the runtime stage (only RUN, COPY and \
                 ENTRYPOINT are)",
                instruction.line
            ),
        }
    }
    Ok(RuntimeStage {
        suite,
        packages,
        copies,
        entrypoint: entrypoint.context("the runtime stage has no ENTRYPOINT")?,
    })
}

/// The instructions of `text`: comments and blank lines dropped, lines
/// ending in `\` joined with the next.
fn instructions(text: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (part, continued) = match line.strip_suffix('\\') {
            Some(part) => (part, true),
            None => (line, false),
        };
        let (first, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        joined.push(' ');
        joined.push_str(part);
        if continued {
            pending = Some((first, joined));
        } else {
            out.extend(instruction(first, &joined));
        }
    }
    if let Some((first, joined)) = pending {
        out.extend(instruction(first, &joined));
    }
    out
}

/// One instruction from its joined text.
fn instruction(line: usize, text: &str) -> Option<Instruction> {
    let text = text.trim();
    let (keyword, args) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    (!keyword.is_empty()).then(|| Instruction {
        line,
        keyword: keyword.to_ascii_uppercase(),
        args: args.trim().to_string(),
    })
}

/// The Debian suite of a `FROM [registry/]debian:<suite>[-slim] [AS name]`.
fn debian_suite(from: &Instruction) -> Result<String> {
    let words: Vec<&str> = from.args.split_whitespace().collect();
    let image = match words.as_slice() {
        [image] => *image,
        [image, as_, _name] if as_.eq_ignore_ascii_case("as") => *image,
        _ => bail!("line {}: FROM {} is not understood", from.line, from.args),
    };
    let name = image.rsplit('/').next().unwrap_or(image);
    let suite = name
        .strip_prefix("debian:")
        .map(|tag| tag.split('-').next().unwrap_or(tag))
        .filter(|suite| !suite.is_empty() && suite.chars().all(|c| c.is_ascii_lowercase()))
        .with_context(|| {
            format!(
                "line {}: the runtime stage's base {image} is not debian:<suite>[-slim]",
                from.line
            )
        })?;
    Ok(suite.to_string())
}

/// The packages a `RUN` installs. The commands understood, joined by `&&`:
/// `apt-get update`, `apt-get install [options] <packages>` and
/// `rm -rf /var/lib/apt/lists/*` (or another path under apt's caches),
/// which the Debian base has done already.
fn run_packages(args: &str) -> Result<Vec<String>> {
    if args.starts_with('[') {
        bail!("RUN in JSON form is not understood");
    }
    let words: Vec<&str> = args.split_whitespace().collect();
    let mut packages = Vec::new();
    for command in words.split(|w| *w == "&&") {
        packages.extend(command_packages(command)?);
    }
    Ok(packages)
}

/// The packages one shell command of a `RUN` installs (see
/// [`run_packages`]).
fn command_packages(command: &[&str]) -> Result<Vec<String>> {
    let shown = command.join(" ");
    if let Some(word) = command
        .iter()
        .find(|w| w.contains([';', '|', '&', '`', '$', '>', '<', '(', ')']))
    {
        bail!("shell syntax {word:?} in `{shown}` is not understood");
    }
    match command {
        ["apt-get", rest @ ..] => {
            let mut words = rest.iter().filter(|w| !w.starts_with('-'));
            match words.next() {
                Some(&"update") if words.next().is_none() => Ok(Vec::new()),
                Some(&"install") => words.map(|w| package_name(w)).collect(),
                _ => bail!("`{shown}` is not understood (only apt-get update and install are)"),
            }
        }
        ["rm", "-rf", paths @ ..]
            if !paths.is_empty()
                && paths.iter().all(|p| {
                    p.starts_with("/var/lib/apt/lists/") || p.starts_with("/var/cache/apt/")
                }) =>
        {
            Ok(Vec::new())
        }
        _ => bail!("`{shown}` is not understood (only apt-get and the removal of apt's lists are)"),
    }
}

/// `word` if it is a Debian package name.
fn package_name(word: &str) -> Result<String> {
    let valid = word.len() >= 2
        && word.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if !valid {
        bail!("{word:?} is not a Debian package name");
    }
    Ok(word.to_string())
}

/// One `COPY [--from=<stage>] <src> <dest>`.
fn copy_file(args: &str) -> Result<CopyFile> {
    if args.starts_with('[') {
        bail!("COPY in JSON form is not understood");
    }
    let mut from_stage = false;
    let mut paths = Vec::new();
    for word in args.split_whitespace() {
        if word.starts_with("--from=") {
            from_stage = true;
        } else if word.starts_with("--") {
            bail!("the option {word} is not understood");
        } else {
            paths.push(word);
        }
    }
    let [src, dest] = paths.as_slice() else {
        bail!("only COPY <src> <dest> (one source) is understood");
    };
    let source = if from_stage {
        let name = src
            .strip_prefix(BUILD_OUTPUT_DIR)
            .filter(|name| is_plain_name(name))
            .with_context(|| format!("{src} is not a file of {BUILD_OUTPUT_DIR}"))?;
        CopySource::BuildOutput(name.to_string())
    } else {
        let plain = !src.starts_with('/')
            && src.split('/').all(is_plain_name)
            && !src.contains(['*', '?', '[']);
        if !plain {
            bail!("{src} is not a plain path inside the build context");
        }
        CopySource::Context(src.to_string())
    };
    if !dest.starts_with('/') {
        bail!("the destination {dest} is not absolute");
    }
    let dest = match dest.strip_suffix('/') {
        Some(dir) => format!("{dir}/{}", src.rsplit('/').next().unwrap_or(src)),
        None => dest.to_string(),
    };
    Ok(CopyFile { source, dest })
}

/// Whether `name` is one path component other than `.` and `..`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// A JSON array of strings (`["/usr/local/bin/weftd"]`).
fn exec_form(args: &str) -> Result<Vec<String>> {
    let list: Vec<String> = serde_json::from_str(args).with_context(|| {
        format!("{args} is not a JSON array of strings (shell form is not understood)")
    })?;
    if list.is_empty() {
        bail!("the list is empty");
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINERFILE: &str = include_str!("../../../../manifests/Containerfile");

    #[test]
    fn the_real_containerfile_is_understood() {
        let stage = runtime_stage(CONTAINERFILE).unwrap();
        assert_eq!(
            stage,
            RuntimeStage {
                suite: "bookworm".into(),
                packages: vec![
                    "iptables".into(),
                    "nftables".into(),
                    "ca-certificates".into()
                ],
                copies: vec![
                    CopyFile {
                        source: CopySource::BuildOutput("weftd".into()),
                        dest: "/usr/local/bin/weftd".into(),
                    },
                    CopyFile {
                        source: CopySource::BuildOutput("weft".into()),
                        dest: "/usr/local/bin/weft".into(),
                    },
                    CopyFile {
                        source: CopySource::BuildOutput("weft-cni".into()),
                        dest: "/usr/local/bin/weft-cni".into(),
                    },
                    CopyFile {
                        source: CopySource::Context("LICENSE".into()),
                        dest: "/usr/share/doc/weft/LICENSE".into(),
                    },
                ],
                entrypoint: vec!["/usr/local/bin/weftd".into()],
            }
        );
    }

    /// A Containerfile whose runtime stage is `stage`, after a build stage
    /// full of instructions the parser need not understand.
    fn with_stage(stage: &str) -> String {
        format!(
            "FROM rust:1 AS build\nWORKDIR /src\nCOPY . .\nRUN cargo build\n\n\
             FROM docker.io/library/debian:trixie-slim\n{stage}"
        )
    }

    #[test]
    fn continuations_comments_and_directories_are_handled() {
        let text = with_stage(
            "RUN apt-get update \\\n  # a comment inside\n  && apt-get install -y \\\n  \
             iproute2 nftables\nCOPY --from=build /src/target/release/weftd /usr/bin/\n\
             ENTRYPOINT [\"/usr/bin/weftd\", \"--v=2\"]\n",
        );
        let stage = runtime_stage(&text).unwrap();
        assert_eq!(stage.suite, "trixie");
        assert_eq!(stage.packages, ["iproute2", "nftables"]);
        assert_eq!(stage.copies[0].dest, "/usr/bin/weftd");
        assert_eq!(stage.entrypoint, ["/usr/bin/weftd", "--v=2"]);
    }

    /// The error of a runtime stage `stage`, as text with its causes.
    fn error_of(stage: &str) -> String {
        format!("{:#}", runtime_stage(&with_stage(stage)).unwrap_err())
    }

    #[test]
    fn a_bad_stage_is_refused_clearly() {
        let entry = "ENTRYPOINT [\"/x\"]\n";
        let err = error_of(&format!("USER nobody\n{entry}"));
        assert!(err.contains("line 7: USER is not understood"), "{err}");
        let err = error_of(&format!("RUN curl -s x | sh\n{entry}"));
        assert!(
            err.contains("line 7: RUN") && err.contains("\"|\""),
            "{err}"
        );
        let err = error_of(&format!("RUN apt-get install -y iproute2 && make\n{entry}"));
        assert!(err.contains("`make` is not understood"), "{err}");
        let err = error_of(&format!("COPY --chown=1 a /b\n{entry}"));
        assert!(err.contains("--chown=1"), "{err}");
        let err = error_of(&format!("COPY a b /c/\n{entry}"));
        assert!(err.contains("one source"), "{err}");
        let err = error_of(&format!("COPY ../secret /c\n{entry}"));
        assert!(err.contains("not a plain path"), "{err}");
        let err = error_of(&format!("COPY --from=build /etc/passwd /c\n{entry}"));
        assert!(err.contains("/src/target/release/"), "{err}");
        let err = error_of("ENTRYPOINT /x\n");
        assert!(err.contains("shell form"), "{err}");
        let err = error_of("COPY a /a\n");
        assert!(err.contains("no ENTRYPOINT"), "{err}");
        let err = format!(
            "{:#}",
            runtime_stage("FROM alpine:3\nENTRYPOINT [\"/x\"]\n").unwrap_err()
        );
        assert!(err.contains("not debian:<suite>"), "{err}");
    }
}
