#!/usr/bin/python3
"""Write pbsmtp-batch's man page or its example config file from the click
command itself, so that neither can drift from --help.

    python3 ci/gendoc.py man  > pbsmtp-batch.8
    python3 ci/gendoc.py conf > pbsmtp-batch.conf

Each option's text is click's own help record (what --help prints); its
environment variable is the one click reads, and its config key the long
option name that the config loader accepts. The prose around the options
is kept here. The Debian package runs this at build time (debian/rules).
"""

import os
import sys
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import pbsmtp_batch as pb  # noqa: E402

# Options for a single action from the command line, not settings to keep in
# the config file (the loader accepts them there too).
ACTIONS = set(pb.ACTIONS) | {"reprocess"}
# Options that are not settings at all.
NOT_SETTINGS = {"config", "now", "version", *pb.BY_HAND_ACTIONS}
# What to show, commented out, for settings whose default is worked out at run time.
EXAMPLES = {"logfile": "/var/log/mail.log", "map_type": "hash",
            "patterns_dir": "/etc/pbsmtp-batch/patterns", "postfix_config": "/etc/postfix",
            "pg_dsn": "host=db.example.org dbname=mail user=pbsmtp",
            "patterns": ["dovecot"], "ignore_nets": ["10.0.0.0/8", "2001:db8::/32"],
            "journal_directory": "/var/log/journal/remote",
            "journal_match": ["_SYSTEMD_UNIT=dovecot.service"],
            "logto": "/var/log/pbsmtp-batch.log",
            "metrics_file": "/var/lib/prometheus/node-exporter/pbsmtp_batch.prom",
            "mysql_url": "mysql://pbsmtp@db.example.org/mail",
            "grant_for": 7200, "revoke_for": 86400}


def context() -> click.Context:
    return click.Context(pb.cli, info_name="pbsmtp-batch", **pb.cli.context_settings)


def options(ctx: click.Context) -> list[click.Option]:
    return [p for p in pb.cli.get_params(ctx)
            if isinstance(p, click.Option) and not p.hidden]


def envvars(ctx: click.Context, param: click.Option) -> list[str]:
    """The variables click reads for this option (the module says which)."""
    return pb.option_envvars(param, ctx.auto_envvar_prefix or "PBSMTP")


def config_keys(param: click.Option) -> list[str]:
    """The keys the config loader (pbsmtp_batch._config_callback) takes for it."""
    if param.name in NOT_SETTINGS or param.name is None or not param.expose_value:
        return []
    return ([o[2:] for o in param.opts if o.startswith("--")]
            + [o[2:] for o in param.secondary_opts])


def default(param: click.Option):
    """The built-in default, or None when it is worked out at run time."""
    value = param.default
    if value is None or type(value).__name__ == "Sentinel":   # click 8.3's UNSET
        return [] if param.multiple else (False if param.is_flag else None)
    if param.name in pb._SECONDS:      # whole seconds, given as text to the callback
        return int(value)
    return value


###############################################################################
# The man page ################################################################
###############################################################################

def roff(text: str) -> str:
    """Plain text as roff: backslashes, minus signs, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.split("\n"))


def bold_options(text: str) -> str:
    """The option names of a help record's first column in bold, metavars in italics."""
    out = []
    for part in text.split(", "):
        words = part.split(" ")
        out.append(" ".join(f"\\fB{roff(w)}\\fR" if w.startswith("-") or w == "/"
                            else f"\\fI{roff(w)}\\fR" for w in words))
    return ", ".join(out)


NAME_AND_SYNOPSIS = r"""
.SH NAME
pbsmtp\-batch \- POP\-before\-SMTP relay authorisation for Postfix, as a batch job
.SH SYNOPSIS
.B pbsmtp\-batch
.RI [ OPTIONS ]
.br
.B pbsmtp\-batch \-\-dry\-run \-\-debug
.RI [ OPTIONS ]
.br
.B pbsmtp\-batch \-\-list
.RB [ \-\-json ]
.RI [ OPTIONS ]
.br
.B pbsmtp\-batch \-\-check\-patterns
.RB [ \-\-logfile\fR=\fIFILE ]
"""

DESCRIPTION = r"""
.SH DESCRIPTION
A mail client logs in over POP3 or IMAP, and the POP/IMAP server logs that
login.
.B pbsmtp\-batch
reads the mail log lines written since its last run, finds the
.I successful
logins with its pattern files, and writes each client's address into a
Postfix access map, with the login time as the value.
Postfix relays for the addresses in that map until the grace window has
passed.
There is no resident process: cron or a systemd path unit starts it, it does
one pass and exits.
.PP
Each run takes an exclusive lock in the state directory (an overlapping run
exits 0); reads only the new log lines, across log rotations; takes each
login's time from its own log line; leaves out Postfix's
.BR mynetworks ,
the
.B \-\-ignore\-net
networks and unspecified, multicast and broadcast addresses; merges the
logins into the existing map, keeping the newest login per address, and drops
entries older than the grace window; builds the new map with
.BR postmap (1)
beside the old one and renames it into place; and only then commits the new
log offset.
A run that fails changes neither the map nor the offset, so the next run
reads the same lines again.
.PP
Success is silent, so cron mails only problems.
Postfix consults the map through
.B smtpd_relay_restrictions
in
.IR main.cf :
.PP
.RS 4
.nf
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated,
    check_client_access hash:/etc/postfix/pop\-before\-smtp,
    reject_unauth_destination
.fi
.RE
.PP
Adding the check to
.B smtpd_recipient_restrictions
alone is not enough since Postfix 2.10: the relay decision is taken before.
Run
.B pbsmtp\-batch
once by hand before
.BR "postfix reload" :
until the map exists, Postfix answers "451 temporary lookup failure".
"""

CONFIGURATION = r"""
.SH CONFIGURATION
Every option can also be set with its environment variable and in the
config file, under the key named with each option above.
The command line wins over the environment, which wins over the config file,
which wins over the built\-in default.
.PP
The config file is TOML, with the long option names as keys; a
.BI \-\-no NAME
form takes the opposite value:
.PP
.RS 4
.nf
logfile = "/var/log/mail.log"
grace = 900
ignore\-net = ["10.0.0.0/8"]
.fi
.RE
.PP
In the environment, a repeatable option takes several values separated by
blanks
.RB ( PBSMTP_IGNORE_NET="10.0.0.0/8\ 192.0.2.0/24" ),
and an on/off option takes 1, true or yes, or 0, false or no.
"""

ENVIRONMENT = r"""
.SH ENVIRONMENT
.TP
.B PBSMTP_*
The options, as listed under OPTIONS.
.TP
.B MAIL_CONFIG
The Postfix configuration directory, as for Postfix's own commands, when
.B \-\-postfix\-config
and
.B PBSMTP_POSTFIX_CONFIG
are not set.
.TP
.B JOURNAL_STREAM
Set by systemd when standard error goes to the journal (see
.BR systemd.exec (5)).
When it names the very stream that standard error is,
.B Error:
lines start with the
.BR sd\-daemon (3)
priority
.B <3>
and warnings with
.BR <4> ,
so that the journal files them as errors and warnings.
.TP
.B TZ
Log lines without a time zone are read in the local one.
"""

FILES = r"""
.SH FILES
.TP
.I /etc/pbsmtp\-batch.conf
The settings, read when it exists.
.TP
.I /etc/postfix/pop\-before\-smtp.db
The map written by default (the
.B \-\-dbfile
name plus the suffix postmap gives the
.B \-\-map\-type).
.TP
.I /var/lib/pbsmtp\-batch/
The state directory: the saved log offset, the lock, and the grants and
revocations made by hand
.RI ( manual ).
.TP
.I /etc/pbsmtp\-batch/patterns/
The administrator's pattern files; when this directory exists, it is used
instead of the shipped ones.
.TP
.I /usr/share/pbsmtp\-batch/patterns/
The shipped pattern files, one per server family, each with its samples.
.TP
.I /etc/cron.d/pbsmtp\-batch
The cron job: one run every minute.
In the Debian package it runs only once
.B CRON_ENABLED=yes
is set in
.IR /etc/default/pbsmtp\-batch .
.TP
.IR pbsmtp\-batch.service ", " pbsmtp\-batch.path ", " pbsmtp\-batch.timer
The systemd units for path mode: a run on every write to the mail log, and
one every minute.
They run as the system user
.BR pbsmtp ,
in group
.BR adm ,
and are not enabled when installed.
Use either the units or the cron job, not both.
"""

EXIT_STATUS = r"""
.SH EXIT STATUS
.TP
.B 0
Success, and also when another run holds the lock.
.TP
.B 1
An error, reported on one
.B Error:
line; the map and the saved offset are left as they were.
With
.BR \-\-check\-patterns ,
also when a pattern's own sample fails.
.TP
.B 2
A command\-line usage error.
"""

EXAMPLES_SECTION = r"""
.SH EXAMPLES
What the next run would change, and why, line by line:
.PP
.RS 4
.B pbsmtp\-batch \-\-dry\-run \-\-debug
.RE
.PP
Who may relay now:
.PP
.RS 4
.B pbsmtp\-batch \-\-list
.RE
.PP
Why may this address relay, or not (its map entry, grants and revocations,
why it is left out, its last logins):
.PP
.RS 4
.B pbsmtp\-batch \-\-explain=192.0.2.10
.RE
.PP
Let it relay now for two hours, by hand; take it out again:
.PP
.RS 4
.B pbsmtp\-batch \-\-grant=192.0.2.10 \-\-grant\-for=7200
.br
.B pbsmtp\-batch \-\-revoke=192.0.2.10
.RE
.PP
Is the map wired into Postfix before reject_unauth_destination, and readable?
.PP
.RS 4
.B pbsmtp\-batch \-\-check\-postfix
.RE
.PP
Is an address allowed to relay? (prints its login time, or nothing):
.PP
.RS 4
.B postmap \-q 192.0.2.10 hash:/etc/postfix/pop\-before\-smtp
.RE
.PP
Test the patterns on the whole log; change nothing:
.PP
.RS 4
.B pbsmtp\-batch \-\-check\-patterns \-\-logfile=/var/log/mail.log
.RE
.PP
Rebuild the map after losing it:
.PP
.RS 4
.B pbsmtp\-batch \-\-reprocess
.RE
.PP
Run from cron every minute, as in
.IR /etc/cron.d/pbsmtp\-batch :
.PP
.RS 4
.B * * * * * root pbsmtp\-batch
.RE
.PP
Or in path mode, after the steps in the comments of
.IR pbsmtp\-batch.service :
.PP
.RS 4
.B systemctl enable \-\-now pbsmtp\-batch.path pbsmtp\-batch.timer
.RE
"""

SEE_ALSO = r"""
.SH SEE ALSO
.BR postmap (1),
.BR postconf (1),
.BR access (5),
.BR postconf (5),
.BR logrotate (8),
.BR cron (8),
.BR systemd.path (5),
.BR sd\-daemon (3)
.PP
The README, in
.I /usr/share/doc/pbsmtp\-batch/
on Debian, covers the other back ends (Sendmail, qmail, Exim, PostgreSQL,
memcached), the supported POP/IMAP servers and log formats, and the pattern
files.
"""


def option_entry(ctx: click.Context, param: click.Option) -> str:
    names, help_text = param.get_help_record(ctx)
    lines = [".TP", bold_options(names), roff(help_text)]
    variables, keys = envvars(ctx, param), config_keys(param)
    if variables:
        lines += [".br", "Environment: " + ", ".join(f"\\fB{roff(v)}\\fR" for v in variables)
                  + "."]
    if keys:
        lines += [".br", "Config key: " + " or ".join(f"\\fB{roff(k)}\\fR" for k in keys) + "."]
    return "\n".join(lines)


def man_page() -> str:
    ctx = context()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    head = (f'.TH PBSMTP\\-BATCH 8 "{date}" "pbsmtp\\-batch {pb.__version__}" '
            f'"System Administration"\n.nh\n.ad l')
    opts = "\n".join(option_entry(ctx, p) for p in options(ctx))
    return "\n".join([
        '.\\" Generated by ci/gendoc.py from the click command; edit that, not this.',
        head, NAME_AND_SYNOPSIS.strip(), DESCRIPTION.strip(), ".SH OPTIONS", opts,
        CONFIGURATION.strip(), ENVIRONMENT.strip(), FILES.strip(), EXIT_STATUS.strip(),
        EXAMPLES_SECTION.strip(), SEE_ALSO.strip()]) + "\n"


###############################################################################
# The example config file #####################################################
###############################################################################

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_file() -> str:
    ctx = context()
    out = ["# /etc/pbsmtp-batch.conf: settings for pbsmtp-batch(8), in TOML.",
           "#",
           "# Every setting is shown commented out, with its built-in default (or, where",
           "# the default is worked out at run time, an example). Keys are the long",
           "# option names; the command line and the PBSMTP_* variables win over this",
           "# file. One-off actions (--dry-run, --list, --check-patterns, --reprocess)",
           "# belong on the command line. Generated by ci/gendoc.py from --help."]
    for param in options(ctx):
        keys = config_keys(param)
        if not keys or param.name in ACTIONS:
            continue
        help_text = param.get_help_record(ctx)[1]
        value = default(param)
        if value is None or value == [] and param.name in EXAMPLES:
            value = EXAMPLES.get(param.name, "")
        out.append("")
        out.extend("# " + line for line in click.wrap_text(help_text, 76).splitlines())
        out.append(f"#{keys[0]} = {toml_value(value)}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) == 2 else ""
    if what not in ("man", "conf"):
        sys.exit("usage: gendoc.py man|conf")
    sys.stdout.write(man_page() if what == "man" else config_file())
