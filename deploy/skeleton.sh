#!/usr/bin/env bash
# Writes the Cargo workspace at SRC to DEST reduced to what dependency resolution needs:
# Cargo.toml files, Cargo.lock, and a stub for every file that is the root of a target (lib,
# bin, build script, bench, example, test). Building DEST compiles every dependency and nothing
# of ours, so deploy/Dockerfile can cache that in a layer that changes only when a manifest or
# the lock file does (what cargo-chef does, which the offline machines cannot install).
# Usage: deploy/skeleton.sh SRC DEST
set -euo pipefail
src=${1:?usage: skeleton.sh SRC DEST}
dest=${2:?usage: skeleton.sh SRC DEST}
cd "$src"
mkdir -p "$dest"
cp Cargo.lock "$dest/"
while IFS= read -r manifest; do
  dir=$(dirname "$manifest")
  mkdir -p "$dest/$dir"
  cp "$manifest" "$dest/$manifest"
  grep -q '^\[package\]' "$manifest" || continue
  shopt -s nullglob
  for f in "$dir"/src/lib.rs "$dir"/src/main.rs "$dir"/build.rs "$dir"/src/bin/*.rs \
           "$dir"/src/bin/*/main.rs "$dir"/benches/*.rs "$dir"/examples/*.rs "$dir"/tests/*.rs; do
    [ -f "$f" ] || continue
    mkdir -p "$dest/$(dirname "$f")"
    case "$f" in
      */src/lib.rs) : > "$dest/$f" ;;
      *) echo 'fn main() {}' > "$dest/$f" ;;
    esac
  done
  shopt -u nullglob
done < <(find . -name Cargo.toml -not -path './target/*' -not -path './node_modules/*' \
           | sed 's|^\./||' | sort)
