#!/usr/bin/env bash
# Build vcsim (the vSphere simulator pycapstan's tests use) from Debian's govmomi sources.
#
# Usage: build.sh [OUTDIR]        (default: the bin/ directory beside this script)
# Result: OUTDIR/vcsim. Nothing is built when it exists and is newer than main.go and this
# script, so the tests call it every run. Concurrent calls build once (a lock in OUTDIR).
#
# Needs the Debian packages golang-go golang-github-vmware-govmomi-dev
# golang-github-google-uuid-dev (the README's set-up command installs them). The build runs
# in GOPATH mode against /usr/share/gocode with a throw-away Go cache: no network, no module
# proxy, nothing written outside OUTDIR.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/bin}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
bin="$out/vcsim"

die() { echo "vcsim: error: $*" >&2; exit 1; }

fresh() { [[ -x $bin && $bin -nt $here/main.go && $bin -nt $here/build.sh ]]; }

exec 9>"$out/.build.lock"
flock 9
if fresh; then
    exit 0
fi

command -v go >/dev/null || die "go not found: install golang-go"
[[ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ]] ||
    die "no govmomi simulator in /usr/share/gocode: install golang-github-vmware-govmomi-dev" \
        "golang-github-google-uuid-dev"

work="$(mktemp -d)"
trap 'rm -rf "$work"; rm -f "$bin.tmp.$$"' EXIT
mkdir -p "$work/vcsim"
cp "$here/main.go" "$work/vcsim/main.go"

echo "vcsim: building $bin (about 30 s on 2 cores)"
start=$SECONDS
(
    cd "$work/vcsim"
    export GOCACHE="$work/gocache" GOPATH=/usr/share/gocode GO111MODULE=off GOPROXY=off \
        GOFLAGS='' GOENV=off HOME="$work"
    go build -o "$bin.tmp.$$" .
)
mv -f "$bin.tmp.$$" "$bin"
echo "vcsim: built $bin in $((SECONDS - start)) s"
