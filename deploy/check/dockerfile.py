#!/usr/bin/env python3
"""Static checks of deploy/Dockerfile where no Docker engine runs (`make deploy-check`, `make lint`).

- every instruction is a Dockerfile keyword, the first (after ARGs) is FROM, and a line
  continuation does not run off the end;
- every COPY/ADD source is a previous stage (--from) or exists in the repository and is not
  hidden by .dockerignore; ADD fetches no URL; repository paths that RUN names exist too;
- .dockerignore leaves Cargo.lock and every workspace member in the build context, and
  leaves out target/, node_modules/, .git and docs/;
- a stage that runs `cargo build` builds (the dependency skeleton) before it copies sources;
- the final stage runs as a non-root USER (numeric, so runAsNonRoot can verify it);
- the Rust image and RUSTUP_TOOLCHAIN match rust-toolchain.toml's channel.

Python 3.11 standard library only. Usage: dockerfile.py [deploy/Dockerfile]
The build context is the repository root (the Dockerfile's grandparent directory).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import sys
import tomllib

KEYWORDS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


def instructions(text: str, path: str, errors: list):
    """Yields (line number, KEYWORD, arguments) with continuations joined and comments dropped."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start = i + 1
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [line]
        while parts[-1].rstrip().endswith("\\"):
            parts[-1] = parts[-1].rstrip()[:-1]
            # Comment lines inside a continuation are skipped, as Docker does.
            while i < len(lines) and lines[i].lstrip().startswith("#"):
                i += 1
            if i >= len(lines):
                errors.append(f"{path}:{start}: line continuation runs off the end of the file")
                break
            parts.append(lines[i])
            i += 1
        joined = " ".join(p.strip() for p in parts)
        keyword, _, args = joined.partition(" ")
        if "<<" in args and keyword.upper() in {"RUN", "COPY"}:
            errors.append(f"{path}:{start}: heredocs are not supported by this checker")
        yield start, keyword, args.strip()


class DockerIgnore:
    """The .dockerignore rules Docker applies: last match wins, `!` re-includes, `**` spans
    directories, and a pattern that matches a directory matches what is inside it."""

    def __init__(self, path: str):
        self.rules = []
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as fh:
            for raw in fh:
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                negate = line.startswith("!")
                pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
                self.rules.append((negate, re.compile(self._regex(pattern)), line))

    @staticmethod
    def _regex(pattern: str) -> str:
        out, i = "", 0
        while i < len(pattern):
            c = pattern[i]
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
                continue
            if pattern.startswith("**", i):
                out += ".*"
                i += 2
                continue
            out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
            i += 1
        return "^" + out + "$"

    def rule_for(self, rel: str):
        """The rule that excludes rel (or one of its parent directories), or None."""
        rel = os.path.normpath(rel)
        parts = rel.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        hit = None
        for negate, rx, line in self.rules:
            if any(rx.match(p) for p in prefixes):
                hit = None if negate else line
        return hit


def check(dockerfile: str) -> list[str]:
    errors: list[str] = []
    root = os.path.dirname(os.path.dirname(os.path.abspath(dockerfile)))
    ignore = DockerIgnore(os.path.join(root, ".dockerignore"))
    with open(dockerfile, encoding="utf-8") as fh:
        text = fh.read()
    tracked_top = {e for e in os.listdir(root) if e not in {"target", ".git", "node_modules"}}

    def in_context(src: str, where: str, what: str):
        rel = os.path.normpath(src.lstrip("/"))
        if rel == ".":
            return
        matches = glob.glob(os.path.join(root, rel))
        if not matches:
            errors.append(f"{where}: {what} {src!r} does not exist in the repository")
            return
        for m in matches:
            rule = ignore.rule_for(os.path.relpath(m, root))
            if rule:
                errors.append(f"{where}: {what} {src!r} is excluded by .dockerignore ({rule!r})")

    stages: list[str] = []
    final_user = None
    seen_from = False
    rust_images, rustup_toolchain = [], None
    # Per stage: did a `cargo build` run before the sources were copied in?
    built_before_sources: dict[str, bool] = {}
    sources_copied: set[str] = set()
    for lineno, keyword, args in instructions(text, dockerfile, errors):
        where = f"{dockerfile}:{lineno}"
        kw = keyword.upper()
        if kw not in KEYWORDS:
            errors.append(f"{where}: unknown instruction {keyword!r}")
            continue
        if keyword != kw:
            errors.append(f"{where}: write instructions in upper case ({keyword!r})")
        if not seen_from and kw not in {"FROM", "ARG"}:
            errors.append(f"{where}: {kw} before the first FROM")
        if kw == "FROM":
            seen_from = True
            words = [w for w in args.split() if not w.startswith("--")]
            if not words:
                errors.append(f"{where}: FROM without an image")
                continue
            image = words[0]
            if len(words) == 3 and words[1].upper() == "AS":
                stages.append(words[2].lower())
            elif len(words) == 1:
                stages.append(str(len(stages)))
            else:
                errors.append(f"{where}: expected `FROM image [AS name]`, got {args!r}")
                stages.append(str(len(stages)))
            if image.split(":")[0] in ("rust", "docker.io/library/rust"):
                rust_images.append((where, image))
            final_user = None
        elif kw in {"COPY", "ADD"}:
            try:
                tokens = json.loads(args) if args.startswith("[") else shlex.split(args)
            except (ValueError, json.JSONDecodeError) as e:
                errors.append(f"{where}: cannot parse {kw} arguments: {e}")
                continue
            flags = [t for t in tokens if t.startswith("--")]
            paths = [t for t in tokens if not t.startswith("--")]
            if len(paths) < 2:
                errors.append(f"{where}: {kw} needs at least one source and a destination")
                continue
            from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if from_stage is not None:
                if from_stage.lower() not in stages[:-1] and from_stage not in map(
                        str, range(len(stages) - 1)):
                    errors.append(f"{where}: {kw} --from={from_stage} names no previous stage")
                continue
            if any(os.path.normpath(p) in {".", "services", "proto", "tests"}
                   for p in paths[:-1]):
                sources_copied.add(stages[-1])
            for src in paths[:-1]:
                if re.match(r"^[a-z]+://", src) or src.startswith("git@"):
                    errors.append(f"{where}: {kw} fetches {src!r}; builds download nothing "
                                  "but crates")
                    continue
                in_context(src, where, f"{kw} source")
        elif kw == "RUN":
            if "cargo build" in args:
                built_before_sources.setdefault(stages[-1], stages[-1] not in sources_copied)
            # Repository paths that a RUN names (deploy/skeleton.sh) must be in the context.
            for token in re.findall(r"(?<![\w/.-])(?:\./)?([\w.-]+/[\w./-]+)", args):
                if token.split("/")[0] in tracked_top and token.split("/")[0] != "target":
                    in_context(token, where, "RUN names")
        elif kw == "USER":
            final_user = args.split(":")[0]
        elif kw == "ENV":
            m = re.search(r"\bRUSTUP_TOOLCHAIN=(\S+)", args)
            if m:
                rustup_toolchain = (where, m.group(1))

    if not stages:
        errors.append(f"{dockerfile}: no FROM")
    if final_user is None:
        errors.append(f"{dockerfile}: the final stage sets no USER (it would run as root)")
    elif not final_user.isdigit() or final_user == "0":
        errors.append(f"{dockerfile}: the final stage's USER {final_user!r} must be a numeric "
                      "non-root uid (runAsNonRoot cannot verify a name)")

    for stage, cached in built_before_sources.items():
        if not cached:
            errors.append(f"{dockerfile}: stage {stage} copies the sources before its first "
                          "cargo build, so every source change rebuilds every dependency "
                          "(build the deploy/skeleton.sh skeleton first)")

    # The build context must hold the workspace, and leave out what is large or private.
    for rel in ["target/release/relay", "node_modules/.bin/buf", ".git/HEAD", "docs/intake.md"]:
        if not ignore.rule_for(rel):
            errors.append(f".dockerignore: {rel} is in the build context; leave out "
                          f"{rel.split('/')[0]}/")
    with open(os.path.join(root, "Cargo.toml"), "rb") as fh:
        members = tomllib.load(fh).get("workspace", {}).get("members", [])
    for rel in ["Cargo.toml", "Cargo.lock"] + [f"{m}/Cargo.toml" for m in members]:
        rule = ignore.rule_for(rel)
        if rule:
            errors.append(f".dockerignore: {rule!r} hides {rel}, which the build needs")

    # One Rust version: the image tag, RUSTUP_TOOLCHAIN and rust-toolchain.toml.
    with open(os.path.join(root, "rust-toolchain.toml"), "rb") as fh:
        channel = tomllib.load(fh)["toolchain"]["channel"]
    for where, image in rust_images:
        tag = image.partition(":")[2]
        if not (tag == channel or tag.startswith(channel + "-")):
            errors.append(f"{where}: image {image} is not rust-toolchain.toml's {channel}")
    if rust_images and (rustup_toolchain is None or rustup_toolchain[1] != channel):
        errors.append(f"{dockerfile}: set ENV RUSTUP_TOOLCHAIN={channel} in the build stage "
                      "(rust-toolchain.toml would make rustup fetch components)")
    return errors


def main() -> int:
    dockerfile = sys.argv[1] if len(sys.argv) > 1 else "deploy/Dockerfile"
    errors = check(dockerfile)
    for e in errors:
        print(f"FAIL {e}", file=sys.stderr)
    if errors:
        print(f"deploy/check/dockerfile.py: {len(errors)} problem(s)", file=sys.stderr)
        return 1
    print(f"deploy/check/dockerfile.py: {dockerfile} parses; every path it names is in the "
          "build context")
    return 0


if __name__ == "__main__":
    sys.exit(main())
