#!/usr/bin/env bash
# Installs what building and testing batchmax needs and fetches the test model.
# Idempotent: installs only what is missing, so a second run is quick and offline-safe.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-doc: the English prose (Python docs sources) that `batchmax eval` builds its
# haystacks and perplexity texts from.
debs=(cmake g++ ninja-build pkg-config libgtest-dev libgmock-dev libbenchmark-dev
      nlohmann-json3-dev libcli11-dev libcpp-httplib-dev libfmt-dev python3 python3-pip
      python3-doc)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q </dev/null
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

# Python packages the tests' reference scripts use (numpy, gguf, tokenizers) and the
# official openai client the server's end-to-end test drives it with.
py_missing=()
for m in numpy gguf tokenizers openai; do
  python3 -c "import $m" 2>/dev/null || py_missing+=("$m")
done
if [ ${#py_missing[@]} -gt 0 ]; then
  echo "setup: pip installing ${py_missing[*]}" >&2
  # Debian's python refuses system-wide pip installs unless told otherwise (PEP 668).
  python3 -m pip install --quiet "${py_missing[@]}" </dev/null ||
    python3 -m pip install --quiet --break-system-packages "${py_missing[@]}" </dev/null
fi

bash scripts/fetch_model.sh >/dev/null
echo "setup: done (model: $(bash scripts/fetch_model.sh))" >&2
