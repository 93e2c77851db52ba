"""Dependency treebanks for the parser task (models/poh.py): a CoNLL-U reader and a synthetic generator.

A sentence is a dict of equal-length lists: {"form": [...], "upos": [...], "head": [...],
"deprel": [...]}, heads 1-based with 0 = the root (CoNLL-U's convention).

    read_conllu(path) -> [sentence]            multiword-token lines (1-2) and empty nodes (1.1) skipped
    write_conllu(path, sentences)              the 10-column format (lemma, xpos, feats, deps, misc "_")
    load_conllu_dir(dir) -> (train, dev)       the single *-train.conllu and *-dev.conllu of a UD treebank
                                               folder (UD EWT: en_ewt-ud-train.conllu, en_ewt-ud-dev.conllu)
    generate(n, seed) -> [sentence]            synthetic projective treebank, deterministic by seed
    is_projective(heads), is_tree(heads)       checks used by the tests

The synthetic treebank is made by a small grammar with UD categories and UD's head rules (content
words head their phrases; det, amod, case attach to the noun; aux, advmod, mark, punct to the verb):

    S      -> CLAUSE PUNCT                     the clause's verb is the root
    CLAUSE -> SUBJ (AUX) VERB (OBJ) PP* (ADV) (SCONJ CLAUSE)
    SUBJ   -> NP | PRON          OBJ -> NP     (only transitive verbs take one)
    NP     -> (DET) ADJ* NOUN (that VERB NP) | PROPN          a relative clause: acl:relcl on the noun
    PP     -> ADP NP            ADP -> case on the NP's noun; the noun -> obl on the verb or nmod on the object
                                (once a PP has gone to the verb, later ones do too: the trees stay projective)

Prepositional-phrase attachment is the non-local decision: a PP after an object attaches to the
verb or to the object noun according to a fixed lexical preference of the (verb, preposition,
noun) triple (a hash, so the same words always attach the same way), which a parser can only learn
by looking several words away. Phrases are contiguous and attach through their heads, so every tree
is projective. Depth of nested clauses is capped at 2; lengths are typically 5-30 tokens.
"""
from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
        "PUNCT", "SCONJ", "SYM", "VERB", "X")

LEXICON = {
    "DET": ["the", "a", "this", "every", "some", "that"],
    "ADJ": ["old", "red", "small", "quiet", "heavy", "bright", "strange", "wooden", "young", "cold",
            "green", "long", "empty", "famous", "broken", "soft"],
    "NOUN": ["man", "woman", "dog", "cat", "house", "river", "book", "table", "garden", "letter",
             "city", "teacher", "box", "window", "child", "bridge", "car", "song", "key", "road",
             "friend", "picture", "student", "door", "hill", "boat", "market", "lamp"],
    "PROPN": ["Anna", "Paris", "Tom", "Mara", "Oslo", "Lee"],
    "PRON": ["she", "he", "they", "we", "it"],
    "VERB_T": ["saw", "found", "took", "painted", "opened", "sold", "carried", "watched", "wrote",
               "built", "moved", "liked"],
    "VERB_I": ["slept", "walked", "laughed", "waited", "arrived", "ran", "stayed", "sang"],
    "AUX": ["will", "can", "must", "did"],
    "ADP": ["in", "on", "with", "near", "under", "behind", "from", "for"],
    "ADV": ["quickly", "today", "again", "slowly", "often", "there"],
    "SCONJ": ["because", "when", "although", "while"],
}
MAX_DEPTH = 2


def _prefers_noun(verb, adp, noun):
    """The fixed lexical preference of a PP after an object: True = attach to the object noun."""
    h = hashlib.sha256(f"{verb}|{adp}|{noun}".encode()).digest()
    return h[0] < 128


class _Span:
    """A contiguous phrase: tokens with heads local to the span (-1 = the phrase's head attaches outside)."""

    def __init__(self):
        self.form, self.upos, self.head, self.deprel = [], [], [], []
        self.root = None                        # index of the phrase head within the span

    def word(self, form, upos, head=-1, deprel="dep"):
        self.form.append(form), self.upos.append(upos), self.head.append(head), self.deprel.append(deprel)
        return len(self.form) - 1

    def add(self, other, attach_to, deprel):
        """Append another span; its head attaches to local index attach_to (None: the outside) as deprel."""
        off = len(self.form)
        for i in range(len(other.form)):
            h = other.head[i]
            if i == other.root:
                h, rel = (-1 if attach_to is None else attach_to), deprel
            else:
                h, rel = h + off, other.deprel[i]
            self.word(other.form[i], other.upos[i], h, rel)
        return off + other.root


class _Grammar:
    def __init__(self, rng):
        self.rng = rng

    def pick(self, cat):
        words = LEXICON[cat]
        return words[int(self.rng.integers(len(words)))]

    def chance(self, p):
        return bool(self.rng.random() < p)

    def np(self, depth):
        s = _Span()
        if self.chance(0.15):
            s.root = s.word(self.pick("PROPN"), "PROPN")
            return s
        det = self.chance(0.8)
        n_adj = int(self.rng.choice([0, 0, 1, 1, 2]))
        first = len(s.form)
        if det:
            s.word(self.pick("DET"), "DET")
        for _ in range(n_adj):
            s.word(self.pick("ADJ"), "ADJ")
        s.root = s.word(self.pick("NOUN"), "NOUN")
        for i in range(first, s.root):
            s.head[i] = s.root
            s.deprel[i] = "det" if s.upos[i] == "DET" else "amod"
        if depth < MAX_DEPTH and self.chance(0.12):          # relative clause: that VERB NP
            rel = _Span()
            that = rel.word("that", "PRON")
            rel.root = rel.word(self.pick("VERB_T"), "VERB")
            rel.head[that], rel.deprel[that] = rel.root, "nsubj"
            rel.add(self.np(depth + 1), rel.root, "obj")
            s.add(rel, s.root, "acl:relcl")
        return s

    def pp(self, depth):
        s = _Span()
        adp = s.word(self.pick("ADP"), "ADP")
        s.root = s.add(self.np(depth + 1), None, "")
        s.head[adp], s.deprel[adp] = s.root, "case"
        return s

    def clause(self, depth):
        s = _Span()
        if self.chance(0.25):
            subj = _Span()
            subj.root = subj.word(self.pick("PRON"), "PRON")
        else:
            subj = self.np(depth)
        subj_at = s.add(subj, None, "")
        aux = s.word(self.pick("AUX"), "AUX") if self.chance(0.25) else None
        transitive = self.chance(0.7)
        verb = self.pick("VERB_T" if transitive else "VERB_I")
        s.root = s.word(verb, "VERB")
        s.head[subj_at], s.deprel[subj_at] = s.root, "nsubj"
        if aux is not None:
            s.head[aux], s.deprel[aux] = s.root, "aux"
        obj_at = s.add(self.np(depth), s.root, "obj") if transitive else None
        for _ in range(int(self.rng.choice([0, 1, 1, 2]))):
            pp = self.pp(depth)
            noun = pp.form[pp.root]
            if obj_at is not None and _prefers_noun(verb, pp.form[0], noun):
                s.add(pp, obj_at, "nmod")
            else:
                s.add(pp, s.root, "obl")
                obj_at = None                   # the object left the right frontier: no crossing arcs
        if self.chance(0.3):
            s.word(self.pick("ADV"), "ADV", s.root, "advmod")
        if depth < MAX_DEPTH and self.chance(0.15):
            sub = _Span()
            mark = sub.word(self.pick("SCONJ"), "SCONJ")
            sub.root = sub.add(self.clause(depth + 1), None, "")
            sub.head[mark], sub.deprel[mark] = sub.root, "mark"
            s.add(sub, s.root, "advcl")
        return s

    def sentence(self):
        s = self.clause(0)
        s.word(".", "PUNCT", s.root, "punct")
        heads = [0 if h == -1 else h + 1 for h in s.head]
        rels = ["root" if h == -1 else r for h, r in zip(s.head, s.deprel)]
        return {"form": list(s.form), "upos": list(s.upos), "head": heads, "deprel": rels}


def generate(n: int, seed: int = 0) -> list[dict]:
    """n synthetic sentences (projective trees), the same for the same (n, seed)."""
    g = _Grammar(np.random.default_rng([int(seed), 20251011]))
    return [g.sentence() for _ in range(int(n))]


# ---------------------------------------------------------------- checks

def is_tree(heads) -> bool:
    """Exactly one token has head 0, heads lie in 0..n, and following heads from any token reaches 0."""
    n = len(heads)
    if sum(1 for h in heads if h == 0) != 1 or any(not 0 <= h <= n for h in heads):
        return False
    for i in range(1, n + 1):
        seen, j = set(), i
        while j != 0:
            if j in seen:
                return False
            seen.add(j)
            j = heads[j - 1]
    return True


def is_projective(heads) -> bool:
    """No two arcs cross (the root arc 0 -> r counts as an arc)."""
    arcs = [(min(i, h), max(i, h)) for i, h in enumerate(heads, start=1)]
    for a, b in arcs:
        for c, d in arcs:
            if a < c < b < d:
                return False
    return True


# ---------------------------------------------------------------- CoNLL-U

def read_conllu(path) -> list[dict]:
    """The sentences of a CoNLL-U file (comments, multiword-token ranges and empty nodes skipped)."""
    sentences, cur = [], {"form": [], "upos": [], "head": [], "deprel": []}
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                if cur["form"]:
                    sentences.append(cur)
                cur = {"form": [], "upos": [], "head": [], "deprel": []}
                continue
            if line.startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 10:
                raise ValueError(f"{path}:{lineno}: expected 10 tab-separated columns, got {len(cols)}")
            if "-" in cols[0] or "." in cols[0]:
                continue
            try:
                head = int(cols[6])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: HEAD {cols[6]!r} is not an integer") from None
            cur["form"].append(cols[1]), cur["upos"].append(cols[3])
            cur["head"].append(head), cur["deprel"].append(cols[7])
    if cur["form"]:
        sentences.append(cur)
    for k, s in enumerate(sentences):
        if any(not 0 <= h <= len(s["head"]) for h in s["head"]):
            raise ValueError(f"{path}: sentence {k + 1} has a head outside 0..{len(s['head'])}")
    return sentences


def write_conllu(path, sentences) -> None:
    """The sentences as CoNLL-U, written atomically."""
    lines = []
    for k, s in enumerate(sentences, start=1):
        lines.append(f"# sent_id = {k}")
        lines.append("# text = " + " ".join(s["form"]))
        for i, (form, upos, head, rel) in enumerate(zip(s["form"], s["upos"], s["head"], s["deprel"]), start=1):
            lines.append("\t".join([str(i), form, "_", upos, "_", "_", str(head), rel, "_", "_"]))
        lines.append("")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def load_conllu_dir(conllu_dir) -> tuple[list[dict], list[dict]]:
    """(train, dev) from the folder's *-train.conllu and *-dev.conllu (exactly one of each)."""
    root = Path(conllu_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"conllu_dir {root} is not a directory")
    out = []
    for split in ("train", "dev"):
        found = sorted(glob.glob(str(root / f"*-{split}.conllu")))
        if len(found) != 1:
            raise FileNotFoundError(f"conllu_dir {root}: expected one *-{split}.conllu, found {len(found)}"
                                    + (f" ({', '.join(Path(p).name for p in found)})" if found else ""))
        out.append(read_conllu(found[0]))
    return out[0], out[1]
