//! What a package ships besides the binary: shell completions and the man page, both
//! generated from the same clap definition as the parser, so they cannot drift from
//! what the binary accepts. A program built on the library gets its own name in them.

use crate::program::complain;
use std::io::Write;
use std::path::Path;

/// `corral completions SHELL`: writes the completion script to standard output.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> i32 {
    let name = cmd.get_name().to_string();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    match out.flush() {
        Ok(()) => 0,
        Err(e) => {
            complain!("cannot write the completion script: {e}");
            1
        }
    }
}

/// The sections clap knows nothing about, in roff: `--help` shows the same facts as
/// plain text (its `after_help`), which roff would reflow into one paragraph.
const MAN_EXTRA: &str = r#".SH ENVIRONMENT
.TP
\fBCORRAL_\fR\fISECTION\fR\fB__\fR\fIKEY\fR=\fIvalue\fR
Overrides a key of the [master], [worker], [flow] or [log] section of the file, e.g.
\fBCORRAL_MASTER__WORKERS=4\fR. \fBcorral \-T\fR shows which value won and where it came from.
A variable of this shape whose section does not exist (\fBCORRAL_MASTR__WORKERS\fR) is refused, as a mistyped key in the file is.
.SH SIGNALS
Sent to the master, or through \fBcorral \-s\fR, which waits for the outcome and exits non\-zero if it failed.
.TP
\fBSIGHUP\fR (\fB\-s reload\fR)
Re\-read and check the config, start a new generation, drain the old one.
.TP
\fBSIGQUIT\fR (\fB\-s quit\fR)
Graceful stop: stop accepting, let connections finish until drain_timeout, exit.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR (\fB\-s stop\fR)
Fast stop: close everything now.
.TP
\fBSIGUSR1\fR (\fB\-s reopen\fR)
Reopen the log files (after logrotate).
.TP
\fBSIGUSR2\fR (\fB\-s upgrade\fR)
Start the binary on disk as a new master with the listening sockets; drain this one once it serves; roll back if it fails.
The new master continues the generation numbers where the old one stopped; while both run, each log line of a master names it (\fBmaster{pid=N}\fR).
.TP
\fBSIGWINCH\fR
Drain every worker but keep the master and its listeners (SIGHUP starts workers again).
.SH FILES
.TP
\fI/etc/corral/corral.toml\fR
The default configuration file (\fB\-c\fR).
.SH EXIT STATUS
0 on success; 1 when the config is invalid, the master could not start, or a command sent with \fB\-s\fR failed; 2 on a usage error.
"#;

/// The subcommands, as `corral NAME` with what each does. clap_mangen's own section
/// refers to a page per subcommand (`corral-status(1)`) that no package ships.
fn commands_section(cmd: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let name = roff_text(cmd.get_name());
    writeln!(out, ".SH COMMANDS")?;
    writeln!(
        out,
        "\\fB{name} \\fR\\fICOMMAND\\fR \\fB\\-\\-help\\fR prints the options of each."
    )?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        writeln!(out, ".TP")?;
        writeln!(out, "\\fB{name} {}\\fR", roff_text(sub.get_name()))?;
        writeln!(out, "{}", roff_text(&about))?;
    }
    Ok(())
}

/// Text safe in a roff line: backslashes and hyphens escaped, no leading control
/// character.
fn roff_text(s: &str) -> String {
    let t = s.replace('\\', "\\e").replace('-', "\\-");
    match t.starts_with(['.', '\'']) {
        true => format!("\\&{t}"),
        false => t,
    }
}

/// `corral man [-o FILE]`: renders the man page (section 1) to `output` or stdout.
pub fn man(cmd: clap::Command, output: Option<&Path>) -> i32 {
    let mut page = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    let rendered = man
        .render_title(&mut page)
        .and_then(|()| man.render_name_section(&mut page))
        .and_then(|()| man.render_synopsis_section(&mut page))
        .and_then(|()| man.render_description_section(&mut page))
        .and_then(|()| man.render_options_section(&mut page))
        .and_then(|()| commands_section(&cmd, &mut page))
        .and_then(|()| page.write_all(MAN_EXTRA.as_bytes()))
        .and_then(|()| man.render_version_section(&mut page));
    if let Err(e) = rendered {
        complain!("cannot render the man page: {e}");
        return 1;
    }
    let written = match output {
        Some(path) => std::fs::write(path, &page).map_err(|e| format!("{}: {e}", path.display())),
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&page)
                .and_then(|()| out.flush())
                .map_err(|e| e.to_string())
        }
    };
    match written {
        Ok(()) => 0,
        Err(e) => {
            complain!("cannot write the man page: {e}");
            1
        }
    }
}
