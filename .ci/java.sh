#!/usr/bin/env bash
# The Java SDK (sdk/java): installs JDK 17, Tomcat 10.1's jars and JUnit 5 from Debian
# (Maven Central is not needed), builds the client and Tomcat manager jars, and runs the
# JUnit tests against real `sessync node` processes (target/debug/sessync, built here if
# missing). The JUnit console launcher prints its summary and exits non-zero on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

# openssl: the TLS tests make their certificates with it.
packages=(openjdk-17-jdk-headless libtomcat10-embed-java libtomcat10-java junit5 openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "== installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x target/debug/sessync ]; then
  cargo build --bin sessync
fi

export SESSYNC_BIN="$PWD/target/debug/sessync"
timeout 600 sdk/java/build.sh test
