# Shared by scripts/run and scripts/test: install what is missing. Sourced,
# not run. Everything the project installs itself goes under .state/.

NATS_SERVER_VERSION=v2.15.2    # keep in step with libs/go.mod
STATICCHECK_VERSION=v0.8.2
HELM_VERSION=v3.22.0          # deploytest renders and lints the chart with it

STATE_BIN="$PWD/.state/bin"
mkdir -p "$STATE_BIN"

as_root() {
	if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_debian_packages PKG... installs the Debian packages not yet installed.
ensure_debian_packages() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		echo "installing Debian packages: ${missing[*]}"
		as_root apt-get update -qq
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

ensure_go() {
	if ! command -v go >/dev/null 2>&1; then
		echo "Go 1.26 or newer is needed: https://go.dev/doc/install" >&2
		exit 1
	fi
	local v
	v=$(go env GOVERSION | sed 's/^go//')
	case "$v" in
		1.2[6-9]* | 1.[3-9]* | [2-9].*) ;;
		*) echo "Go $v is too old: 1.26 or newer is needed" >&2; exit 1 ;;
	esac
}

# ensure_go_tool NAME MODULE/PATH VERSION builds a pinned Go program into
# .state/bin unless that version is already there: the version the binary's
# own build information names for its main module (go version -m), not a
# stamp file that a binary copied or built by hand would not match.
ensure_go_tool() {
	local name=$1 pkg=$2 version=$3
	if [ -x "$STATE_BIN/$name" ] &&
		[ "$(go version -m "$STATE_BIN/$name" 2>/dev/null | awk '$1 == "mod" { print $3; exit }')" = "$version" ]; then
		return
	fi
	echo "building $name $version from the Go module proxy"
	GOBIN="$STATE_BIN" GOWORK=off GOFLAGS=-mod=mod go install "$pkg@$version"
}

# build_devstack builds the stack supervisor (libs/cmd/devstack).
build_devstack() {
	go build -o "$STATE_BIN/devstack" ./libs/cmd/devstack
}

ensure_base() {
	ensure_go
	ensure_debian_packages postgresql redis-server
	if ! command -v npm >/dev/null 2>&1; then
		ensure_debian_packages nodejs npm
	fi
}

# build_web installs the web app's pinned dependencies from its lock file
# and builds it into web/dist, which the gateways serve.
build_web() {
	(cd web && { [ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund --loglevel=error; } && npm run --silent build)
}
