#!/usr/bin/env bash
# Installs every Debian package Twill's lab, tests and benchmarks use. Idempotent; needs root.
set -euo pipefail
PKGS=(iproute2 nftables iputils-ping iperf3 tcpdump ethtool containernetworking-plugins
      podman runc busybox-static graphviz etcd-server etcd-client openssl
      strace bird2 frr python3 python3-venv containerd openvswitch-switch)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# kubernetes-validate (PyPI) checks deploy/kubernetes against the Kubernetes 1.30-1.34
# schemas offline (crates/twill/tests/deploy.rs); its PyYAML runs scripts/kustomize.py.
VENV=/opt/twill-venv
KV_VERSION=1.37.0
if ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -qx "$KV_VERSION"; then
  echo "installing kubernetes-validate $KV_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "kubernetes-validate==$KV_VERSION"
fi
