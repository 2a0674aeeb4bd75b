#!/usr/bin/env bash
# Make the webhook's TLS certificate and fill caBundle in the webhook configurations.
#
#   deploy/kubernetes/make-webhook-cert.sh OUT_DIR [--apply]
#
# Writes OUT_DIR/ca.crt and ca.key (a CA for the webhook only), OUT_DIR/tls.crt and tls.key (for
# tufnotary-admission.tufnotary-admission.svc, valid 1 year) and OUT_DIR/webhooks.yaml
# (webhooks.yaml with caBundle filled in). With --apply, also creates the secret
# tufnotary-admission-tls and applies OUT_DIR/webhooks.yaml with kubectl.
# Needs openssl (and kubectl for --apply). Run it again before the certificate expires.
set -euo pipefail

out=${1:?usage: make-webhook-cert.sh OUT_DIR [--apply]}
apply=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
namespace=tufnotary-admission
service=tufnotary-admission
host="$service.$namespace.svc"

mkdir -p "$out"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -subj "/CN=tufnotary-admission webhook CA" -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$host" \
  -keyout "$out/tls.key" -out "$out/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:%s.cluster.local\nextendedKeyUsage=serverAuth\n' \
  "$host" "$host" > "$out/tls.ext"
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
  -days 365 -extfile "$out/tls.ext" -out "$out/tls.crt" 2>/dev/null
rm -f "$out/tls.csr" "$out/tls.ext" "$out/ca.srl"

bundle=$(base64 < "$out/ca.crt" | tr -d '\n')
sed "s|CA_BUNDLE|$bundle|" "$here/webhooks.yaml" > "$out/webhooks.yaml"
echo "certificate: $out/tls.crt; webhook configurations: $out/webhooks.yaml" >&2

if [ "$apply" = "--apply" ]; then
  kubectl -n "$namespace" create secret tls tufnotary-admission-tls \
    --cert="$out/tls.crt" --key="$out/tls.key" --dry-run=client -o yaml | kubectl apply -f -
  kubectl apply -f "$out/webhooks.yaml"
fi
