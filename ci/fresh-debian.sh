#!/usr/bin/env bash
# Release check: run the README's test command on a pristine Debian root.
#
#   ci/fresh-debian.sh bookworm|trixie [--deb] [--keep]
#
# Builds a minimal root with `debootstrap --variant=minbase SUITE` (what a fresh
# server or the debian:12/13 container image gives you: no python3, no git, no
# rsyslog), mounts what a container would have (proc, sys, dev, dev/pts, a tmpfs
# on /dev/shm, and the root bind-mounted onto itself so that `unshare
# --propagation private` works inside), clones the committed HEAD into
# /root/pbsmtp-batch, and runs the README's test command there as root with
# CI=true and no standard input. It prints the pytest summary line and its run
# time. With --deb it then builds the Debian package in that root
# (dpkg-buildpackage) and installs, runs and purges it in another pristine root
# (ci/deb-smoke.sh). Everything it made is
# unmounted and removed at the end, whatever happens; processes still running
# inside the roots are stopped by PID first.
#
# Needs root, debootstrap and git on this machine. Not part of .ci/run: it
# downloads a whole Debian system and takes 15-30 minutes.
#
# Environment:
#   DEBIAN_MIRROR   mirror to debootstrap from [default: the first Debian URI in
#                   this machine's apt sources]
#   FRESH_CACHE     a directory to keep the debootstrap result in as a tarball,
#                   so that a second run starts from the same pristine root
#                   without downloading it again [default: none]
# The whole script is one block, so bash has read all of it before it runs:
# editing the file during a run cannot change what the run does.
{
set -euo pipefail

usage() { echo "usage: $0 bookworm|trixie [--deb] [--keep]" >&2; exit 2; }
[ $# -ge 1 ] || usage
suite=$1; shift
case "$suite" in bookworm|trixie) ;; *) usage ;; esac
want_deb= keep=
for arg in "$@"; do
    case "$arg" in --deb) want_deb=1 ;; --keep) keep=1 ;; *) usage ;; esac
done
[ "$(id -u)" = 0 ] || { echo "$0: must run as root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "$0: apt-get install debootstrap" >&2; exit 1; }

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
head=$(git -C "$repo" rev-parse HEAD)

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
                 /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
             | awk '{print $2}' | head -n 1 || true)
fi
[ -n "$mirror" ] || { echo "$0: set DEBIAN_MIRROR" >&2; exit 1; }
mirror=${mirror%/}
security=$mirror-security

# Everything below runs in a private mount namespace, so that nothing mounted
# here propagates to this machine's own /dev or /sys.
if [ -z "${FRESH_DEBIAN_NS:-}" ]; then
    FRESH_DEBIAN_NS=1 exec unshare --mount --propagation private "$0" "$suite" "$@"
fi

work=$(mktemp -d /var/tmp/pbsmtp-fresh.XXXXXX)
roots=()

stop_inside() {
    # Every process whose root directory is inside one of our roots, by PID.
    local root pid
    for root in "${roots[@]}"; do
        for _ in 1 2 3; do
            local pids=()
            for pid in /proc/[0-9]*; do
                pid=${pid#/proc/}
                [ "$(readlink "/proc/$pid/root" 2>/dev/null)" = "$root" ] && pids+=("$pid")
            done
            [ ${#pids[@]} -gt 0 ] || break
            kill -TERM "${pids[@]}" 2>/dev/null || true
            sleep 2
            kill -KILL "${pids[@]}" 2>/dev/null || true
        done
    done
}

cleanup() {
    local rc=$?
    set +e
    stop_inside
    for root in "${roots[@]}"; do
        # Deepest mounts first; lazily where a busy one would not let go.
        findmnt -rn -o TARGET | grep -F "$root" | sort -r | while read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m"
        done
    done
    if [ -n "$keep" ]; then
        echo "fresh-debian: kept $work"
    else
        rm -rf --one-file-system "$work"
    fi
    exit $rc
}
trap cleanup EXIT INT TERM

make_root() {   # make_root DIR: a pristine minbase root of $suite at DIR
    local dir=$1 tarball=${FRESH_CACHE:+$FRESH_CACHE/$suite-minbase.tar}
    mkdir -p "$dir"
    if [ -n "$tarball" ] && [ -f "$tarball" ]; then
        tar -C "$dir" -xpf "$tarball"
    else
        debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"$work/debootstrap-$suite.log" 2>&1 \
            || { tail -n 20 "$work/debootstrap-$suite.log"; return 1; }
        if [ -n "$tarball" ]; then
            mkdir -p "$FRESH_CACHE"
            tar -C "$dir" -cpf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        fi
    fi
    # A fresh install's apt sources: the release, its updates and security.
    cat > "$dir/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb $security $suite-security main
EOF
    cp /etc/resolv.conf "$dir/etc/resolv.conf"
    # pip in the root reaches the package index only through this machine's
    # pip settings and the CA file they name.
    local ca
    ca=$(pip config list 2>/dev/null | sed -nE "s/^global\.cert='(.*)'$/\1/p" | head -n 1 || true)
    if [ -n "$ca" ] && [ -f "$ca" ]; then
        mkdir -p "$dir/usr/local/share/fresh-debian"
        cp "$ca" "$dir/usr/local/share/fresh-debian/ca.crt"
        # As a pip configuration file, so that every pip in the root uses it
        # (a venv's, pipx's), whatever environment a test gives it.
        printf '[global]\ncert = /usr/local/share/fresh-debian/ca.crt\n' > "$dir/etc/pip.conf"
    fi
    mount --bind "$dir" "$dir"                       # so unshare --propagation works inside
    roots+=("$dir")
    mount -t proc proc "$dir/proc"
    mount --rbind /sys "$dir/sys"
    mount --rbind /dev "$dir/dev"
    mount -t tmpfs -o mode=1777 shm "$dir/dev/shm"
}

in_root() {     # in_root DIR COMMAND: run COMMAND as root in DIR, as a fresh login would
    local dir=$1; shift
    # In the background and waited for: bash runs a trap only once its
    # foreground command is done, and an interrupted run must clean up now.
    chroot "$dir" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CI=true \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        /bin/bash -c "$*" </dev/null &
    wait $!
}

echo "fresh-debian: $suite, commit $head, in $work"

clone() {       # clone ROOT: the committed HEAD, into ROOT/root/pbsmtp-batch
    git clone -q --no-local "$repo" "$1/root/pbsmtp-batch"
    git -C "$1/root/pbsmtp-batch" checkout -q "$head"
}

# The README's quick start (its main job, on the demo log), in a root of its own.
quick_cmd=$(sed -n '/^## Quick start/,/^## /p' "$repo/README" | grep -m1 -E '^apt-get ')
[ -n "$quick_cmd" ] || { echo "fresh-debian: no quick start command in the README" >&2; exit 1; }
quick=$work/quick
make_root "$quick"
clone "$quick"
set +e
in_root "$quick" "cd /root/pbsmtp-batch && $quick_cmd" >"$work/quick.log" 2>&1
rc=$?
set -e
cp "$work/quick.log" "/var/tmp/fresh-debian-$suite-quick.log"
found=$(grep -c '^would add ' "$work/quick.log" || true)
echo "fresh-debian: $suite: quick start: exit $rc, $found addresses it would add"
[ $rc -eq 0 ] && [ "$found" -gt 0 ] || { tail -n 20 "$work/quick.log"; exit 1; }

root=$work/root
make_root "$root"
clone "$root"

# The README's test command, exactly as it stands there.
test_cmd=$(sed -n '/^## Running the tests/,/^## /p' "$repo/README" | grep -m1 -E '^\./ci/test')
[ -n "$test_cmd" ] || { echo "fresh-debian: no test command in the README" >&2; exit 1; }
echo "fresh-debian: running '$test_cmd' in /root/pbsmtp-batch"
start=$(date +%s)
set +e
in_root "$root" "cd /root/pbsmtp-batch && $test_cmd" >"$work/test.log" 2>&1
rc=$?
set -e
took=$(( $(date +%s) - start ))
cp "$work/test.log" "/var/tmp/fresh-debian-$suite.log"
summary=$(grep -E '^=+ .*(passed|failed|error).* =+$|^[0-9]+ (passed|failed)' "$work/test.log" | tail -n 1)
echo "fresh-debian: $suite: ${summary:-no pytest summary} (exit $rc, $((took / 60)) min $((took % 60)) s; log /var/tmp/fresh-debian-$suite.log)"
[ $rc -eq 0 ] || { tail -n 40 "$work/test.log"; exit $rc; }

if [ -n "$want_deb" ]; then
    # Built from a copy without the venv, as a packager's clean tree; the
    # test command has installed the build dependencies.
    in_root "$root" "mkdir /root/build && cd /root/pbsmtp-batch &&
        tar --exclude=./.venv --exclude=./.git -cf - . | tar -C /root/build -xf - &&
        cd /root/build && dpkg-buildpackage -us -uc -b" >"$work/deb.log" 2>&1 ||
        { tail -n 40 "$work/deb.log"; exit 1; }
    deb=$(ls "$root"/root/pbsmtp-batch_*.deb | head -n 1)
    clean=$work/clean
    make_root "$clean"
    cp "$deb" "$repo/ci/deb-smoke.sh" "$clean/root/"
    set +e
    in_root "$clean" "cd /root && bash ./deb-smoke.sh ./$(basename "$deb")" >"$work/smoke.log" 2>&1
    rc=$?
    set -e
    cp "$work/smoke.log" "/var/tmp/fresh-debian-$suite-deb.log"
    echo "fresh-debian: $suite: $(basename "$deb"): $(tail -n 1 "$work/smoke.log") (exit $rc)"
    [ $rc -eq 0 ] || { tail -n 40 "$work/smoke.log"; exit $rc; }
fi
exit 0
}
