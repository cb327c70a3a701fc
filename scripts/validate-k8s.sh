#!/usr/bin/env bash
# Validate the Kubernetes manifests in k8s/ offline, strictly, against pinned Kubernetes versions.
#
# 1. kubernetes-validate (PyPI; it ships the OpenAPI schemas of each
#    Kubernetes version, so no cluster and no network beyond PyPI is needed)
#    checks every YAML file in k8s/ with --strict (unknown fields are errors),
#    against each version in SLUICE_K8S_VERSIONS.
# 2. kustomization.yaml: every file in its `resources` exists and is listed
#    once, and every YAML file in k8s/ is listed -- except the files named in
#    NOT_IN_KUSTOMIZATION below, which are examples applied on their own.
# 3. The kustomization is rendered (`kubectl kustomize`, or `kustomize build`,
#    when either is installed; both work offline) and the output is validated too.
# 4. The drain fits in the grace period: terminationGracePeriodSeconds >
#    preStop sleep + SLUICE_DRAIN_SECONDS + 5 s of slack.
#
# Usage: scripts/validate-k8s.sh
# Environment:
#   SLUICE_K8S_VERSIONS  space-separated versions (default: "1.30.0 latest";
#                        1.30 is the oldest the manifests support -- the preStop
#                        `sleep` action -- and "latest" is the newest Kubernetes
#                        the installed kubernetes-validate has schemas for)
#   PYTHON               interpreter to use (default: python3)
# kubernetes-validate is installed with pip when missing (into a virtualenv
# under ~/.cache/sluice when pip may not install into the interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=k8s
NOT_IN_KUSTOMIZATION=(redis-statefulset.example.yaml)
VERSIONS="${SLUICE_K8S_VERSIONS:-1.30.0 latest}"
PY="${PYTHON:-python3}"

die() { echo "validate-k8s: $*" >&2; exit 1; }
say() { echo "validate-k8s: $*"; }

command -v "$PY" >/dev/null 2>&1 || die "$PY not found"
[[ -f $DIR/kustomization.yaml ]] || die "$DIR/kustomization.yaml is missing"

# --- kubernetes-validate -------------------------------------------------------
if ! "$PY" -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    say "installing kubernetes-validate from PyPI"
    if ! "$PY" -m pip install --quiet --disable-pip-version-check kubernetes-validate >&2; then
        venv="${XDG_CACHE_HOME:-$HOME/.cache}/sluice/k8s-validate-venv"
        "$PY" -m venv "$venv" >&2 || die "cannot create a virtualenv at $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check kubernetes-validate >&2 \
            || die "pip could not install kubernetes-validate"
        PY="$venv/bin/python"
    fi
    "$PY" -c 'import kubernetes_validate, yaml' 2>/dev/null || die "kubernetes-validate is not importable after install"
fi
kv() { "$PY" -m kubernetes_validate "$@"; }

# Versions whose strict schemas the installed package ships.
shipped=$("$PY" - <<'EOF'
import os, re, kubernetes_validate
d = os.path.join(os.path.dirname(kubernetes_validate.__file__), "kubernetes-json-schema")
vs = sorted({m.group(1) for n in os.listdir(d) if (m := re.fullmatch(r"v(\d+\.\d+\.\d+)-local-strict", n))},
            key=lambda v: tuple(map(int, v.split("."))))
print(" ".join(vs))
EOF
)
[[ -n "$shipped" ]] || die "kubernetes-validate ships no schemas?"
latest=${shipped##* }
resolved=()
for v in $VERSIONS; do
    [[ $v == latest ]] && v=$latest
    [[ " $shipped " == *" $v "* ]] || die "kubernetes-validate $(kv --version 2>/dev/null) has no schemas for Kubernetes $v (it has: $shipped)"
    resolved+=("$v")
done

mapfile -t files < <(find "$DIR" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) ! -name kustomization.yaml ! -name kustomization.yml | LC_ALL=C sort)
[[ ${#files[@]} -gt 0 ]] || die "no manifests in $DIR"

failed=0
for v in "${resolved[@]}"; do
    if out=$(kv --strict --quiet -k "$v" "${files[@]}" 2>&1); then
        say "Kubernetes $v: ${#files[@]} files pass kubernetes-validate --strict"
    else
        echo "$out" >&2
        say "Kubernetes $v: FAILED"
        failed=1
    fi
done

# --- kustomization, resource list and drain arithmetic --------------------------------
if ! "$PY" - "$DIR" "${NOT_IN_KUSTOMIZATION[@]}" <<'EOF'
import os, sys, yaml

d, excluded = sys.argv[1], set(sys.argv[2:])
problems = []
with open(os.path.join(d, "kustomization.yaml")) as f:
    k = yaml.safe_load(f)
res = k.get("resources") or []
for r in res:
    if res.count(r) > 1:
        problems.append(f"kustomization.yaml lists {r} more than once")
    if not os.path.isfile(os.path.join(d, r)):
        problems.append(f"kustomization.yaml lists {r}, which does not exist")
for name in sorted(os.listdir(d)):
    if not name.endswith((".yaml", ".yml")) or name.startswith("kustomization."):
        continue
    if name in excluded:
        if name in res:
            problems.append(f"{name} is an example applied on its own, yet kustomization.yaml lists it")
    elif name not in res:
        problems.append(f"{name} is not in kustomization.yaml's resources (or add it to NOT_IN_KUSTOMIZATION)")

docs = []
for r in res:
    p = os.path.join(d, r)
    if os.path.isfile(p):
        with open(p) as f:
            docs += [x for x in yaml.safe_load_all(f) if x]
seen = set()
for x in docs:
    key = (x.get("kind"), (x.get("metadata") or {}).get("name"))
    if key in seen:
        problems.append(f"two resources are {key[0]}/{key[1]}")
    seen.add(key)

# terminationGracePeriodSeconds > preStop + SLUICE_DRAIN_SECONDS + slack
config = {}
for x in docs:
    if x.get("kind") == "ConfigMap":
        config.update(x.get("data") or {})
drain = int(config.get("SLUICE_DRAIN_SECONDS", "10"))
for x in docs:
    if x.get("kind") != "Deployment":
        continue
    spec = x["spec"]["template"]["spec"]
    grace = spec.get("terminationGracePeriodSeconds", 30)
    for c in spec.get("containers", []):
        pre = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        need = pre + drain + 5
        if grace <= need:
            problems.append(f"Deployment/{x['metadata']['name']}: terminationGracePeriodSeconds {grace} "
                            f"must exceed preStop {pre} s + SLUICE_DRAIN_SECONDS {drain} s + 5 s slack")
        else:
            print(f"validate-k8s: drain fits: grace {grace} s > preStop {pre} s + drain {drain} s + 5 s slack")

for p in problems:
    print(f"validate-k8s: {p}", file=sys.stderr)
if not problems:
    print(f"validate-k8s: kustomization.yaml lists all {len(res)} manifests "
          f"({len(docs)} resources); kept out on purpose: {', '.join(sorted(excluded)) or 'none'}")
sys.exit(1 if problems else 0)
EOF
then
    failed=1
fi

# --- render the kustomization and validate the result ------------------------------------
render=()
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    render=(kubectl kustomize "$DIR")
elif command -v kustomize >/dev/null 2>&1; then
    render=(kustomize build "$DIR")
fi
if [[ ${#render[@]} -gt 0 ]]; then
    tmp=$(mktemp "${TMPDIR:-/tmp}/sluice-k8s-rendered.XXXXXX.yaml")
    trap 'rm -f "$tmp"' EXIT
    if ! timeout 120 "${render[@]}" >"$tmp" 2>"$tmp.err"; then
        cat "$tmp.err" >&2; rm -f "$tmp.err"
        say "${render[*]} FAILED"
        failed=1
    else
        rm -f "$tmp.err"
        n=$(grep -c '^kind:' "$tmp" || true)
        for v in "${resolved[@]}"; do
            if out=$(kv --strict --quiet -k "$v" "$tmp" 2>&1); then
                say "Kubernetes $v: rendered kustomization ($n resources, ${render[*]}) passes"
            else
                echo "$out" >&2
                say "Kubernetes $v: rendered kustomization FAILED"
                failed=1
            fi
        done
    fi
else
    say "neither kubectl nor kustomize is installed: rendering skipped (the files were checked one by one)"
fi

[[ $failed -eq 0 ]] || die "FAILED"
say "all manifests valid"
