#!/usr/bin/env python3
"""Renders a kustomization the way `kubectl kustomize DIR` does, for the subset Twill's
deploy/kubernetes uses (kubectl is not installed here): `resources` (files, or folders with
their own kustomization.yaml) and `patches` with `path` (strategic merge patches). A field
it does not know is refused, so it never renders something kustomize would render
differently.

    scripts/kustomize.py DIR            # the documents, `---` separated, on stdout
    scripts/kustomize.py --json DIR     # a JSON list of them (for tests)

Strategic merge, as Kubernetes' patchMergeKey says for the fields the manifests patch:
maps merge key by key; lists of containers, initContainers, volumes, volumeMounts, env and
ports merge by `name`; every other list is replaced. A patch matches a resource by
apiVersion, kind, metadata.name and metadata.namespace; one that matches nothing is an
error (kustomize's too).
"""
import json
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "resources", "patches"}
MERGE_BY_NAME = {"containers", "initContainers", "volumes", "volumeMounts", "env", "ports"}


class Error(Exception):
    pass


def merge(base, patch, field=None):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if isinstance(k, str) and k.startswith("$"):
                raise Error(f"directive {k} is not supported by this renderer")
            out[k] = merge(base[k], v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_BY_NAME:
        out = list(base)
        for item in patch:
            name = item.get("name") if isinstance(item, dict) else None
            if name is None:
                raise Error(f"an item of {field} without a name: {item!r}")
            at = next((i for i, b in enumerate(out) if b.get("name") == name), None)
            if at is None:
                out.append(item)
            else:
                out[at] = merge(out[at], item, None)
        return out
    return patch


def ident(doc):
    m = doc.get("metadata") or {}
    return (doc.get("apiVersion"), doc.get("kind"), m.get("name"), m.get("namespace"))


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def render(folder):
    kfile = os.path.join(folder, "kustomization.yaml")
    if not os.path.isfile(kfile):
        raise Error(f"{folder}: no kustomization.yaml")
    with open(kfile) as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - KNOWN
    if unknown:
        raise Error(f"{kfile}: field(s) {sorted(unknown)} not supported by this renderer")
    docs = []
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(folder, r))
        docs.extend(render(p) if os.path.isdir(p) else load_docs(p))
    for entry in k.get("patches", []):
        if set(entry) != {"path"}:
            raise Error(f"{kfile}: a patch takes only `path` here: {entry!r}")
        for patch in load_docs(os.path.join(folder, entry["path"])):
            at = [i for i, d in enumerate(docs) if ident(d) == ident(patch)]
            if not at:
                raise Error(f"{kfile}: patch {entry['path']} matches no resource {ident(patch)}")
            for i in at:
                docs[i] = merge(docs[i], patch)
    return docs


def block_strings(dumper, s):
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


def main():
    args = sys.argv[1:]
    as_json = args[:1] == ["--json"]
    if as_json:
        args = args[1:]
    if len(args) != 1:
        print("usage: kustomize.py [--json] DIR", file=sys.stderr)
        return 2
    try:
        docs = render(args[0])
    except (Error, OSError, yaml.YAMLError) as e:
        print(f"kustomize.py: {e}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(docs, sys.stdout, indent=1)
    else:
        yaml.SafeDumper.add_representer(str, block_strings)
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
