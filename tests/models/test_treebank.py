"""models/treebank.py: the synthetic grammar's trees, CoNLL-U reading and writing, the UD folder layout."""
from collections import Counter

import pytest

from models import treebank


def test_generated_sentences_are_projective_trees_deterministic_by_seed():
    a, b, c = treebank.generate(300, seed=1), treebank.generate(300, seed=1), treebank.generate(300, seed=2)
    assert a == b and a != c
    for s in a:
        n = len(s["form"])
        assert len(s["upos"]) == len(s["head"]) == len(s["deprel"]) == n
        assert treebank.is_tree(s["head"]) and treebank.is_projective(s["head"])
        assert s["upos"][s["head"].index(0)] == "VERB" and s["form"][-1] == "."
        assert set(s["upos"]) <= set(treebank.UPOS)


def test_generated_structure_follows_the_head_rules():
    sents = treebank.generate(500, seed=0)
    rels = Counter()
    for s in sents:
        for i, (u, h, r) in enumerate(zip(s["upos"], s["head"], s["deprel"]), start=1):
            rels[r] += 1
            head_pos = s["upos"][h - 1] if h else None
            if u == "DET" and r == "det" or u == "ADJ":
                assert head_pos == "NOUN" and h > i           # determiners and adjectives precede their noun
            if u == "ADP":
                assert r == "case" and head_pos in ("NOUN", "PROPN") and h > i
            if r in ("obl", "nmod"):
                assert head_pos in (("VERB",) if r == "obl" else ("NOUN", "PROPN"))
    for r in ("nsubj", "obj", "det", "amod", "case", "obl", "nmod", "punct", "root", "acl:relcl", "advcl", "mark"):
        assert rels[r] > 0, r
    lengths = [len(s["form"]) for s in sents]
    assert 3 <= min(lengths) and 8 < sum(lengths) / len(lengths) < 25
    arcs = [abs(h - i) for s in sents for i, h in enumerate(s["head"], start=1) if h]
    assert sum(a > 3 for a in arcs) / len(arcs) > 0.1          # not only adjacent words


def test_pp_attachment_is_a_fixed_lexical_choice():
    n_nmod = 0
    for s in treebank.generate(2000, seed=3):
        for i, (h, r) in enumerate(zip(s["head"], s["deprel"]), start=1):
            if r == "nmod":                    # a PP on the object noun: the (verb, adp, noun) triple wants it
                adp = next(s["form"][k] for k in range(len(s["head"])) if s["head"][k] == i and s["upos"][k] == "ADP")
                verb = s["form"][s["head"][h - 1] - 1]
                assert treebank._prefers_noun(verb, adp, s["form"][i - 1])
                n_nmod += 1
    assert n_nmod > 50


def test_checks_catch_bad_trees():
    assert treebank.is_tree([2, 0, 2])
    assert not treebank.is_tree([0, 0, 2])             # two roots
    assert not treebank.is_tree([2, 1, 0])             # a cycle
    assert not treebank.is_tree([4, 0, 2])             # head out of range
    assert treebank.is_projective([2, 0, 2, 3])
    assert not treebank.is_projective([3, 4, 0, 3])    # arcs 1-3 and 2-4 cross


def test_conllu_round_trip_skips_multiword_tokens_and_empty_nodes(tmp_path):
    sents = treebank.generate(20, seed=5)
    path = tmp_path / "x-ud-train.conllu"
    treebank.write_conllu(path, sents)
    assert treebank.read_conllu(path) == sents
    text = ("# sent_id = 1\n# text = Don't go.\n"
            "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_\n"
            "1\tDo\tdo\tAUX\t_\t_\t3\taux\t_\t_\n"
            "2\tn't\tnot\tPART\t_\t_\t3\tadvmod\t_\t_\n"
            "3\tgo\tgo\tVERB\t_\t_\t0\troot\t_\t_\n"
            "3.1\tgone\tgo\tVERB\t_\t_\t_\t_\t3:conj\t_\n"
            "4\t.\t.\tPUNCT\t_\t_\t3\tpunct\t_\t_\n\n")
    path.write_text(text)
    (s,) = treebank.read_conllu(path)
    assert s == {"form": ["Do", "n't", "go", "."], "upos": ["AUX", "PART", "VERB", "PUNCT"],
                 "head": [3, 3, 0, 3], "deprel": ["aux", "advmod", "root", "punct"]}


def test_bad_conllu_lines_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.conllu"
    path.write_text("1\tgo\tgo\tVERB\t_\t_\t0\troot\t_\n")
    with pytest.raises(ValueError, match=r"bad.conllu:1: expected 10"):
        treebank.read_conllu(path)
    path.write_text("1\tgo\tgo\tVERB\t_\t_\tx\troot\t_\t_\n")
    with pytest.raises(ValueError, match=r"bad.conllu:1: HEAD 'x'"):
        treebank.read_conllu(path)
    path.write_text("1\tgo\tgo\tVERB\t_\t_\t5\troot\t_\t_\n")
    with pytest.raises(ValueError, match="outside"):
        treebank.read_conllu(path)


def test_a_ud_folder_needs_one_train_and_one_dev_file(tmp_path):
    sents = treebank.generate(10, seed=0)
    treebank.write_conllu(tmp_path / "en_ewt-ud-train.conllu", sents)
    with pytest.raises(FileNotFoundError, match=r"\*-dev.conllu, found 0"):
        treebank.load_conllu_dir(tmp_path)
    treebank.write_conllu(tmp_path / "en_ewt-ud-dev.conllu", sents[:3])
    treebank.write_conllu(tmp_path / "en_ewt-ud-test.conllu", sents[:2])
    train, dev = treebank.load_conllu_dir(tmp_path)
    assert train == sents and dev == sents[:3]
    with pytest.raises(FileNotFoundError, match="not a directory"):
        treebank.load_conllu_dir(tmp_path / "nope")
