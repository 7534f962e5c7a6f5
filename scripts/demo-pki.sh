#!/usr/bin/env bash
# A throwaway PKI for the gateway's mTLS listener: a CA, a server certificate for
# localhost/127.0.0.1 (and `envoy`, its name in docker-compose.yml), and a client certificate
# whose URI SAN (spiffe://gatehouse.test/demo) the demo `mtls` policy allows. P-256 keys.
#
#   scripts/demo-pki.sh DIR [DAYS]     DAYS defaults to 365
#
# `make up` makes one in .run/pki; examples/compose/pki holds one made with DAYS=3650 for the
# compose stack. Demo only: the keys are not secret.
set -euo pipefail
dir=$1
days=${2:-365}
mkdir -p "$dir"
cd "$dir"
newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${newkey[@]}" -keyout ca.key -out ca.crt -days "$days" -subj /CN=gatehouse-demo-ca 2>/dev/null
printf 'subjectAltName=DNS:localhost,DNS:envoy,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
printf 'subjectAltName=URI:spiffe://gatehouse.test/demo\nextendedKeyUsage=clientAuth\n' >client.ext
for name in server client; do
    openssl req "${newkey[@]}" -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out "$name.crt" -days "$days" -extfile "$name.ext" 2>/dev/null
done
rm -f ./*.csr ./*.ext ca.srl
# Envoy in its container runs as another user than the one who made the files.
chmod 644 ./*.key
