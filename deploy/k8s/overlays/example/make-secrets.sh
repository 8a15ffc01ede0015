#!/bin/sh
# Makes (or updates) the Secrets the presenced base mounts, from a key set and a projects file.
#
#   make-secrets.sh [--print | --pub-only] KEYDIR [PROJECTS_JSON]
#
# KEYDIR: the cluster's CURVE keys. Missing pairs are made first with
#   presencectl cluster-keys --out KEYDIR --stores $STORES --gateways $GATEWAYS  (2 and 8)
# (existing pairs are kept), so run it again after `presencectl cluster-keys --rotate NAME`.
# PROJECTS_JSON: the projects file. If it does not exist it is made from projects.example.json
# with a fresh random JWT secret, and an API key is made with presencectl key create (its
# secret is printed once, on stderr). Every Secret:
#   presenced-keys-broker    broker.key            + every *.pub
#   presenced-keys-reaper    reaper.key            + every *.pub
#   presenced-keys-store     store-1..N.key        + every *.pub
#   presenced-keys-gateway   gateway-1..M.key      + every *.pub
#   presenced-projects       projects.json
# --print writes them as YAML on stdout instead of applying them (for a sealed-secrets or
# GitOps flow); --pub-only patches only the *.pub entries of the four key Secrets, keeping
# their secret keys (step 1 of a rotation, see the README). Namespace: $NAMESPACE (presenced).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mode=apply
case "${1:-}" in --print) mode=print; shift ;; --pub-only) mode=pub; shift ;; esac
[ $# -ge 1 ] || { sed -n '2,22p' "$0" >&2; exit 2; }
keys=$1
projects=${2:-}
ns=${NAMESPACE:-presenced}

if [ "$mode" != pub ]; then
    presencectl cluster-keys --out "$keys" --stores "${STORES:-2}" --gateways "${GATEWAYS:-8}" >&2
fi
pubs=$(for f in "$keys"/*.pub; do printf -- '--from-file=%s ' "$f"; done)

if [ "$mode" = pub ]; then
    data=$(for f in "$keys"/*.pub; do
        printf '"%s":"%s",' "$(basename "$f")" "$(base64 -w0 < "$f")"; done)
    for role in broker reaper store gateway; do
        kubectl -n "$ns" patch secret "presenced-keys-$role" --type merge \
            -p "{\"data\":{${data%,}}}"
    done
    exit 0
fi

emit() { # NAME ARGS...: one Secret, applied or printed
    name=$1; shift
    # shellcheck disable=SC2086 # the --from-file arguments are meant to split
    yaml=$(kubectl create secret generic "$name" -n "$ns" "$@" --dry-run=client -o yaml)
    if [ "$mode" = print ]; then printf '%s\n---\n' "$yaml"; else printf '%s\n' "$yaml" | kubectl apply -f -; fi
}
from() { for f in "$@"; do printf -- '--from-file=%s ' "$f"; done; }

# shellcheck disable=SC2046,SC2086
emit presenced-keys-broker --from-file="$keys/broker.key" $pubs
# shellcheck disable=SC2046,SC2086
emit presenced-keys-reaper --from-file="$keys/reaper.key" $pubs
# shellcheck disable=SC2046,SC2086
emit presenced-keys-store $(from "$keys"/store-*.key) $pubs
# shellcheck disable=SC2046,SC2086
emit presenced-keys-gateway $(from "$keys"/gateway-*.key) $pubs

if [ -n "$projects" ]; then
    if [ ! -e "$projects" ]; then
        secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
        (umask 077 && sed "s/\"change-me\"/\"$secret\"/" "$here/projects.example.json" > "$projects")
        echo "API key for project demo (shown once; send it as X-Appwrite-Key):" >&2
        presencectl key create --config "$projects" --project demo --name backend \
            --scopes presences.read,presences.write,users.write >&2
    fi
    emit presenced-projects --from-file=projects.json="$projects"
fi
