#!/bin/sh
# ci/deb-smoke.sh DEB: install the built package the way an administrator
# does, use it, purge it, and check that what the package made is gone.
#
# Run as root inside a clean, throw-away Debian 12 or 13 root (the
# fresh-machine script chroots into one); it needs apt to reach a mirror.
# It installs the package with its Recommends (Postfix), plus man-db.
# Daemons are not started: a policy-rc.d that refuses is put in place for
# the run, unless the root already has one.
# Prints "deb-smoke: ok" as its last line, or "deb-smoke: FAILED: why" and
# exits 1.
set -u

deb=${1:?usage: deb-smoke.sh path/to/pbsmtp-batch_VERSION_all.deb}
case $deb in /*|./*) ;; *) deb=./$deb ;; esac

fail() { echo "deb-smoke: FAILED: $*"; exit 1; }
step() { echo "deb-smoke: $*"; }

export DEBIAN_FRONTEND=noninteractive
policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    policy=/usr/sbin/policy-rc.d
fi
work=$(mktemp -d)
trap 'rm -rf "$work" $policy' EXIT

# A root fresh from debootstrap has no package lists yet.
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -n 1)" ]; then
    step "apt-get update"
    apt-get update -q > "$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; fail "apt-get update"; }
fi
step "apt-get install $deb"
apt-get install -y "$deb" man-db > "$work/apt.log" 2>&1 \
    || { tail -20 "$work/apt.log"; fail "apt-get install"; }

step "pbsmtp-batch --version"
version=$(pbsmtp-batch --version) || fail "--version"
case $version in "pbsmtp-batch, version "*) ;; *) fail "--version said: $version" ;; esac
[ "$(command -v pbsmtp-batch)" = /usr/bin/pbsmtp-batch ] || fail "not /usr/bin/pbsmtp-batch"

step "man -w pbsmtp-batch"
page=$(man -w pbsmtp-batch) || fail "man -w"
[ "$page" = /usr/share/man/man8/pbsmtp-batch.8.gz ] || fail "man page at $page"

step "the demo dry-run"
demo=/usr/share/doc/pbsmtp-batch/examples/maillog
out=$(pbsmtp-batch --logfile=$demo --state-dir="$work/demo" --grace=31622400 --dry-run 2>&1) \
    || { echo "$out"; fail "demo dry-run"; }
echo "$out" | grep -q '^would add 192\.0\.2\.10 ' || { echo "$out"; fail "demo found no login"; }

step "the shipped pieces"
for f in /etc/pbsmtp-batch.conf /etc/cron.d/pbsmtp-batch /etc/default/pbsmtp-batch \
         /usr/share/pbsmtp-batch/patterns/dovecot.toml; do
    [ -f "$f" ] || fail "$f is missing"
done
grep -q '^CRON_ENABLED=no$' /etc/default/pbsmtp-batch || fail "cron job not shipped off"
units=$(ls /lib/systemd/system/pbsmtp-batch.service /usr/lib/systemd/system/pbsmtp-batch.service \
        2>/dev/null) || true
[ -n "$units" ] || fail "no pbsmtp-batch.service"
for u in pbsmtp-batch.path pbsmtp-batch.timer; do
    [ ! -e /etc/systemd/system/paths.target.wants/$u ] \
        && [ ! -e /etc/systemd/system/timers.target.wants/$u ] || fail "$u is enabled"
done
id -nG pbsmtp | tr ' ' '\n' | grep -qx adm || fail "user pbsmtp not in group adm"
[ -d /var/lib/pbsmtp-batch ] || fail "no /var/lib/pbsmtp-batch"
# Every setting of the example config, uncommented, is accepted.
sed -n 's/^#\([a-z][a-z0-9-]* = \)/\1/p' /etc/pbsmtp-batch.conf > "$work/all.conf"
pbsmtp-batch --config="$work/all.conf" --version > /dev/null || fail "example config refused"

step "the cron line does nothing while CRON_ENABLED=no"
line=$(sed -n 's/^\* \* \* \* \*[[:space:]]*root[[:space:]]*//p' /etc/cron.d/pbsmtp-batch)
[ -n "$line" ] || fail "no job line in /etc/cron.d/pbsmtp-batch"
out=$(cd / && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c "$line" 2>&1)
[ -z "$out" ] || fail "disabled cron job printed: $out"
[ -z "$(ls -A /var/lib/pbsmtp-batch)" ] || fail "disabled cron job ran"

step "a real run writes the admin's map; a second run reads on from the offset"
cp $demo "$work/mail.log"
pbsmtp-batch --logfile="$work/mail.log" --grace=31622400 || fail "first real run"
[ -f /etc/postfix/pop-before-smtp.db ] || fail "no map written"
postmap -q 192.0.2.10 hash:/etc/postfix/pop-before-smtp > /dev/null || fail "192.0.2.10 not in the map"
tail -n 1 $demo >> "$work/mail.log"
pbsmtp-batch --logfile="$work/mail.log" --grace=31622400 || fail "second run (same log, grown)"

step "apt-get purge pbsmtp-batch"
apt-get purge -y pbsmtp-batch > "$work/apt.log" 2>&1 || { tail -20 "$work/apt.log"; fail "purge"; }
dpkg-query -W -f='${db:Status-Status}' pbsmtp-batch 2>/dev/null | grep -q installed \
    && fail "still installed"
for f in /usr/bin/pbsmtp-batch /etc/pbsmtp-batch.conf /etc/cron.d/pbsmtp-batch \
         /etc/default/pbsmtp-batch /var/lib/pbsmtp-batch /usr/share/pbsmtp-batch \
         /usr/share/man/man8/pbsmtp-batch.8.gz /usr/share/doc/pbsmtp-batch \
         /lib/systemd/system/pbsmtp-batch.service /usr/lib/systemd/system/pbsmtp-batch.service \
         /usr/lib/python3/dist-packages/pbsmtp_batch.py \
         /usr/lib/python3/dist-packages/pbsmtp_stores.py; do
    [ ! -e "$f" ] || fail "$f is left after purge"
done
[ -f /etc/postfix/pop-before-smtp.db ] || fail "purge removed the admin's map"
rm -f /etc/postfix/pop-before-smtp.db
getent passwd pbsmtp > /dev/null && step "user pbsmtp kept, as Debian does for system users"

echo "deb-smoke: ok"
