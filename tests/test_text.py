import json

import pytest
import torch

from itda_lens.provenance import document_id
from itda_lens.text import builtin_documents, file_documents, select_split, token_batches


def test_wikitext_splits_at_article_titles(wikitext):
    documents = list(file_documents(wikitext))
    assert len(documents) == 60
    assert all(doc.lstrip(" \n").startswith("= ") for doc in documents)


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
    path.write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match="'text' field"):
        list(file_documents(path))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(ValueError, match="no text"):
        list(token_batches(file_documents(empty), tokenizer))
    with pytest.raises(FileNotFoundError):
        file_documents(tmp_path / "missing.txt")


def test_bos_only_when_asked(tokenizer):
    batch = next(token_batches(["Some text here."], tokenizer, 8, 1, include_bos=True))
    assert batch.mask[0, 0] and batch.n_tokens == 1 + len(tokenizer("Some text here.", add_special_tokens=False).input_ids)
    assert batch.provenance(torch.tensor([0])).doc.tolist() == [-1]


def test_hugging_face_datasets_stream(tmp_path):
    from itda_lens.text import hf_documents

    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"document {i}"}) for i in range(3)))
    assert list(hf_documents("json", column="body", data_files=str(path))) == [f"document {i}" for i in range(3)]
    with pytest.raises(ValueError, match="no column 'text'"):
        list(hf_documents("json", data_files=str(path)))


def test_builtin_corpus_is_available():
    documents = list(builtin_documents())
    assert len(documents) > 50 and sum(map(len, documents)) > 100_000
