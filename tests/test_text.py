import json

import pytest
import torch

from itda_lens.core.provenance import document_id
from itda_lens.core.text import WINDOW_CHARS, builtin_documents, file_documents, select_split, token_batches


def test_wikitext_splits_at_article_titles(wikitext):
    documents = list(file_documents(wikitext))
    assert len(documents) == 60
    assert all(doc.lstrip(" \n").startswith("= ") for doc in documents)
    # the ids dictionaries already saved point at
    assert [document_id(documents[0]), document_id(documents[-1])] == [7962834766268276902, 105025167109766082]


def test_files_are_read_lazily(tmp_path):
    # Text that cannot be decoded far after the first documents: reading them must not reach it.
    path = tmp_path / "big.txt"
    path.write_bytes(b"first document\n\nsecond document\n\n" + b"more text\n\n" * 20_000 + b"\xff\xfe broken\n")
    documents = file_documents(path)
    assert [next(documents), next(documents)] == ["first document\n", "second document\n"]
    with pytest.raises(ValueError, match="not UTF-8 text"):
        list(documents)


def test_a_huge_document_is_tokenised_only_as_far_as_needed(tmp_path, smollm2_tokenizer):
    path = tmp_path / "one-line.txt"
    text = "lorem ipsum dolor sit amet " * 800_000  # 21.6 MB on one line
    path.write_text(text)
    seen = []

    class Counting:
        bos_token_id, pad_token_id = smollm2_tokenizer.bos_token_id, smollm2_tokenizer.pad_token_id

        def __call__(self, text, **kwargs):
            seen.append(len(text))
            return smollm2_tokenizer(text, **kwargs)

    batches = list(token_batches(file_documents(path), Counting(), 128, 16, max_tokens=2000))
    assert sum(batch.n_tokens for batch in batches) == 2000
    assert sum(seen) <= 3 * WINDOW_CHARS
    read = "".join("".join(b.provenance(torch.nonzero(b.mask.flatten())[:, 0]).token) for b in batches)
    assert 2000 < len(read) and read == text[: len(read)]  # the offsets run on across the pieces


def test_long_documents_get_the_tokens_of_the_whole_text(wikitext, smollm2_tokenizer):
    long = sorted(file_documents(wikitext), key=len)[-3:]
    assert len(long[0]) > 5 * WINDOW_CHARS
    for text in long:
        whole = smollm2_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        batch = next(token_batches([text], smollm2_tokenizer, seq_len=len(whole["input_ids"]) + 1, batch_size=1))
        mask = batch.mask[0]
        assert batch.tokens[0][mask].tolist() == whole["input_ids"]
        assert list(zip(batch.char_start[0][mask].tolist(), batch.char_end[0][mask].tolist())) == [tuple(o) for o in whole["offset_mapping"]]


def test_heldout_and_train_are_disjoint_and_cover_all(wikitext):
    documents = list(file_documents(wikitext))
    train = set(select_split(documents, "train"))
    heldout = set(select_split(documents, "heldout"))
    assert train and heldout and not train & heldout
    assert train | heldout == set(documents)


def test_batches_mark_bos_and_padding(tokenizer):
    documents = ["A short document.", "Another one that is a little longer than the first."]
    batch = next(token_batches(documents, tokenizer, seq_len=8, batch_size=4))
    assert (batch.tokens[:, 0] == tokenizer.bos_token_id).all()
    assert not batch.mask[:, 0].any()
    first_length = len(tokenizer(documents[0], add_special_tokens=False).input_ids)
    assert batch.mask[0].sum() == first_length
    assert (batch.doc[batch.mask] != -1).all() and (batch.doc[~batch.mask] == -1).all()


def test_max_tokens_is_exact(tokenizer, wikitext):
    total = sum(b.n_tokens for b in token_batches(file_documents(wikitext), tokenizer, 64, 4, max_tokens=1000))
    assert total == 1000


def test_provenance_points_at_the_token_text(tokenizer, wikitext):
    batch = next(token_batches(file_documents(wikitext), tokenizer, 64, 4))
    positions = torch.nonzero(batch.mask.flatten())[:, 0][:50]
    records = batch.provenance(positions)
    for i in range(len(records)):
        text = batch.documents[int(records.doc[i])]
        assert document_id(text) == records.doc[i]
        assert records.token[i] == text[records.char_start[i] : records.char_end[i]]
        assert tokenizer.decode([int(records.token_id[i])]) == records.token[i]


def test_jsonl_and_errors(tmp_path, tokenizer):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "first doc"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    assert list(file_documents(path)) == ["first doc", "second"]
    for line in ('{"body": "x"}', '{"text": 3}', "[1, 2]", "not json"):
        path.write_text(line + "\n")
        with pytest.raises(ValueError, match=r"docs.jsonl:1 is not a JSON object with a 'text' field"):
            list(file_documents(path))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(ValueError, match="no text"):
        list(token_batches(file_documents(empty), tokenizer))
    with pytest.raises(FileNotFoundError):
        file_documents(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="not a regular file"):
        file_documents(tmp_path)
    for bad in ({"seq_len": 1}, {"batch_size": 0}, {"max_tokens": 0}):
        with pytest.raises(ValueError, match="must be at least"):
            list(token_batches(["text"], tokenizer, **{"seq_len": 8, **bad}))


def test_bos_only_when_asked(tokenizer):
    batch = next(token_batches(["Some text here."], tokenizer, 8, 1, include_bos=True))
    assert batch.mask[0, 0] and batch.n_tokens == 1 + len(tokenizer("Some text here.", add_special_tokens=False).input_ids)
    assert batch.provenance(torch.tensor([0])).doc.tolist() == [-1]


def test_hugging_face_datasets_stream(tmp_path):
    from itda_lens.core.text import hf_documents

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"document {i}"}) for i in range(3)))
    assert list(hf_documents("json", column="body", data_files=str(path))) == [f"document {i}" for i in range(3)]
    with pytest.raises(ValueError, match="no column 'text'"):
        list(hf_documents("json", data_files=str(path)))


def test_builtin_corpus_is_available():
    documents = list(builtin_documents())
    assert len(documents) > 50 and sum(map(len, documents)) > 100_000
