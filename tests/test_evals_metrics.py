"""EasyEdit-compatible metrics, checked by hand on a tiny bigram model and a whitespace tokenizer."""
from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import pytest
import torch

from editwrap.evals.metrics import (
    answer_tokens, compute_n_gram_entropy, continuation_logprob_dists, convsent_success, fluency,
    fluency_easyedit, generate_fast, generate_tokens, kl_divergence_locality, locality_score, n_gram_entropy,
    sanitation_locality, sanitation_success, sequence_logprob, summarize, token_accuracy, token_logprobs, word_tokenize,
)
from tests.conftest import KNOWEDIT_DIR

WORDS = ["<pad>", "<eos>", "<bos>", "the", "capital", "of", "France", "is", "Paris", "Rome"]
V = 64
ID = {w: i for i, w in enumerate(WORDS)}


class WordTok:
    """Whitespace tokenizer: known words get fixed ids, others hash into the rest of the vocab."""

    pad_token_id, eos_token_id = 0, 1

    def __init__(self, padding_side: str = "right", bos: bool = False):
        self.padding_side, self.bos = padding_side, bos
        self.inv = dict(enumerate(WORDS))

    def _id(self, w: str) -> int:
        if w not in ID:
            ID[w] = len(WORDS) + zlib.crc32(w.encode()) % (V - len(WORDS))
            self.inv[ID[w]] = w
        return ID[w]

    def __call__(self, text: str) -> dict:
        return {"input_ids": [ID["<bos>"]] * self.bos + [self._id(w) for w in text.split()]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(self.inv.get(i, "?") for i in ids if not (skip_special_tokens and i < 3))


def bigram_table(rows: dict[str, dict[str, float]]) -> torch.Tensor:
    """log-probabilities of the next word given the current one; unlisted rows favour 'Rome'."""
    t = torch.full((V, V), -30.0)
    t[:, ID["Rome"]] = 0.0
    for cur, nxt in rows.items():
        t[ID[cur]] = -30.0
        for w, p in nxt.items():
            t[ID[cur], ID[w]] = math.log(p)
    return t


class Bigram(torch.nn.Module):
    """Logits at position t depend only on token t, so any padding/offset error changes results."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


CHAIN = {"<bos>": {"the": 1.0}, "the": {"capital": 1.0}, "capital": {"of": 1.0}, "of": {"France": 1.0},
         "France": {"is": 1.0}, "is": {"Paris": 0.75, "Rome": 0.25}, "Paris": {"<eos>": 1.0}}
PROMPT = "the capital of France is"


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("bos", [False, True])
def test_token_accuracy_by_hand_any_padding(side, bos):
    model, tok = Bigram(bigram_table(CHAIN)), WordTok(side, bos)
    prompts = [PROMPT, PROMPT, PROMPT, "France is"]
    targets = ["Paris", "Rome Paris", "Paris is", "Paris"]
    # "is"->Paris hit; Rome miss + (Rome->Rome) miss; Paris hit + (Paris-><eos>) miss; hit
    assert token_accuracy(model, tok, prompts, targets, batch_size=4) == [1.0, 0.0, 0.5, 1.0]
    assert token_accuracy(model, tok, prompts, targets, batch_size=1) == [1.0, 0.0, 0.5, 1.0]
    assert answer_tokens(model, tok, prompts[:2], targets[:2]) == [[ID["Paris"]], [ID["Paris"], ID["Rome"]]]


def test_logprobs_by_hand():
    model, tok = Bigram(bigram_table(CHAIN)), WordTok("left")
    lp = token_logprobs(model, tok, [PROMPT, PROMPT, "the"], [" Rome", " Paris <eos>", " capital of"])
    assert lp[0] == pytest.approx([math.log(0.25)])
    assert lp[1] == pytest.approx([math.log(0.75), 0.0], abs=1e-6)
    assert lp[2] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert sequence_logprob(model, tok, [PROMPT], [" Paris <eos>"]) == pytest.approx([math.log(0.75)], abs=1e-6)
    d = continuation_logprob_dists(model, tok, [PROMPT], [" Paris"])[0]
    assert d.shape == (1, V) and d[0, ID["Rome"]].item() == pytest.approx(math.log(0.25), abs=1e-6)


def test_batching_matches_single_on_a_real_hf_model():
    """Tiny random GPT-2 (absolute positions): left/right padded batches score like single prompts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                       bos_token_id=2, eos_token_id=1, pad_token_id=0)).eval()
    prompts, targets = [PROMPT, "France is", "the capital"], ["Paris", "Rome Paris is", "of France"]
    single = [token_logprobs(model, WordTok(), [p], [" " + t])[0] for p, t in zip(prompts, targets)]
    for side in ("left", "right"):
        tok = WordTok(side)
        batched = token_logprobs(model, tok, prompts, [" " + t for t in targets])
        for a, b in zip(batched, single):
            assert a == pytest.approx(b, abs=1e-5)
        acc = token_accuracy(model, tok, prompts, targets)
        assert acc == [token_accuracy(model, tok, [p], [t])[0] for p, t in zip(prompts, targets)]
    # HF generate (KV cache) and the plain forward loop agree on greedy tokens
    gen = generate_tokens(model, WordTok(), prompts, max_new_tokens=4)

    class NoGenerate(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    assert generate_tokens(NoGenerate(model), WordTok(), prompts, max_new_tokens=4) == gen


def test_locality_score():
    assert locality_score([[1, 2, 3], [4]], [[1, 2, 9], [4]]) == pytest.approx([2 / 3, 1.0])
    with pytest.raises(ValueError):
        locality_score([[1, 2]], [[1]])
    with pytest.raises(ValueError):
        locality_score([[1]], [])


def test_word_tokenize_follows_treebank_rules():
    assert word_tokenize("I don't know, he said: \"it's gonna rain\" -- maybe... cannot tell!") == [
        "I", "do", "n't", "know", ",", "he", "said", ":", "``", "it", "'s", "gon", "na", "rain", "''", "--",
        "maybe", "...", "can", "not", "tell", "!"]
    # period splitting per sentence; abbreviations and initials keep theirs
    assert word_tokenize("Mr. Smith met J. Doe. It rained.") == ["Mr.", "Smith", "met", "J.", "Doe", ".", "It",
                                                                 "rained", "."]


def test_word_tokenize_matches_nltk_treebank_within_a_sentence():
    """Expected lists are nltk 3.10.4 ``NLTKWordTokenizer().tokenize`` output (recorded, so the test
    needs no nltk import)."""
    cases = {
        "Good muffins cost $3.88 (roughly 3,36 euros) in New York.":
            ["Good", "muffins", "cost", "$", "3.88", "(", "roughly", "3,36", "euros", ")", "in", "New", "York", "."],
        "They'll say 'hello' and we've seen Mr. Smith's car [twice].":
            ["They", "'ll", "say", "'", "hello", "'", "and", "we", "'ve", "seen", "Mr.", "Smith", "'s", "car", "[",
             "twice", "]", "."],
        "'Tis the season; wanna go? @home #tag 50% & more*":
            ["'", "Tis", "the", "season", ";", "wan", "na", "go", "?", "@", "home", "#", "tag", "50", "%", "&", "more",
             "*"],
        "He said \u201cquoted\u201d text \u2013 with dashes\u2014and more.":
            ["He", "said", "\u201c", "quoted", "\u201d", "text", "\u2013", "with", "dashes", "\u2014", "and", "more",
             "."],
    }
    for text, expected in cases.items():
        assert word_tokenize(text) == expected


def test_n_gram_entropy_by_hand():
    # bigrams (the,cat)x2 (cat,the)x2 (the,dog)x1 -> H2 = 1.5219281; trigrams 2/1/1 of 4 -> H3 = 1.5
    h = compute_n_gram_entropy("the cat the cat the dog")
    assert h == pytest.approx((2 / 3 * 1.5219280949 + 4 / 3 * 1.5) / 2)
    # "Hi , you ." : 3 distinct bigrams, 2 distinct trigrams
    assert compute_n_gram_entropy("Hi, you.") == pytest.approx((2 / 3 * math.log2(3) + 4 / 3 * 1.0) / 2)
    assert compute_n_gram_entropy("hello") == 0.0
    assert n_gram_entropy(["the cat the cat the dog", "hello"]) == pytest.approx(h / 2)
    assert n_gram_entropy(["a b c d", "a b c d"], agg="geom") == pytest.approx(compute_n_gram_entropy("a b c d"))


def test_generation_and_fluency():
    model, tok = Bigram(bigram_table(CHAIN)), WordTok()
    assert generate_tokens(model, tok, [PROMPT, "France"], max_new_tokens=5) == [[ID["Paris"]], [ID["is"], ID["Paris"]]]
    # text = prompt + greedy continuation, stopped at <eos>: 6 distinct words
    assert fluency(model, tok, [PROMPT]) == pytest.approx((2 / 3 * math.log2(5) + 4 / 3 * math.log2(4)) / 2)
    sampled = generate_tokens(model, tok, [PROMPT] * 8, max_new_tokens=1, top_k=2, seed=3)
    assert sampled == generate_tokens(model, tok, [PROMPT] * 8, max_new_tokens=1, top_k=2, seed=3)
    assert {t[0] for t in sampled} <= {ID["Paris"], ID["Rome"]}


def test_easyedit_fluency_by_hand():
    """EasyEdit generate_fast: max_out_len counts the prompt (and BOS), EOS does not stop it, the
    decoded text skips special tokens. The chain is deterministic (other tokens sit at e^-30)."""
    model, tok = Bigram(bigram_table({**CHAIN, "is": {"Paris": 1.0}})), WordTok(bos=True)
    # <bos> + 5 prompt words + Paris, <eos>, Rome, Rome = 10 tokens; text "... is Paris Rome Rome"
    ids = generate_fast(model, tok, [PROMPT], 10, return_ids=True)[0]
    assert ids == [ID[w] for w in ("<bos>", *PROMPT.split(), "Paris", "<eos>", "Rome", "Rome")]
    assert generate_fast(model, tok, [PROMPT], 10) == [PROMPT + " Paris Rome Rome"]
    # 8 words: 7 distinct bigrams, 6 distinct trigrams
    exact = (2 / 3 * math.log2(7) + 4 / 3 * math.log2(6)) / 2
    assert fluency_easyedit(model, tok, [PROMPT], 10) == pytest.approx(exact, abs=1e-12)
    # 11 words "... is Paris Rome Rome Rome Rome Rome": bigrams 6 x1 + (Rome,Rome) x4 of 10;
    # trigrams 6 x1 + (Rome,Rome,Rome) x3 of 9
    h2 = -(6 * 0.1 * math.log2(0.1) + 0.4 * math.log2(0.4))
    h3 = -(6 / 9 * math.log2(1 / 9) + 3 / 9 * math.log2(3 / 9))
    assert fluency_easyedit(model, tok, [PROMPT], 13) == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2, abs=1e-12)
    # a prompt already max_out_len long gets no new token: 4 bigrams, 3 trigrams
    assert generate_fast(model, tok, [PROMPT], 3) == [PROMPT]
    assert fluency_easyedit(model, tok, [PROMPT], 3) == pytest.approx((2 / 3 * 2 + 4 / 3 * math.log2(3)) / 2)


def test_easyedit_sampling_renormalises_top_k():
    """Top-k renormalised sampling: "is" -> Paris 0.75 / Rome 0.25; seeded per (seed, prompt)."""
    model, tok = Bigram(bigram_table(CHAIN)), WordTok()
    draws = [generate_fast(model, tok, [PROMPT], 6, seed=s, return_ids=True)[0][-1] for s in range(300)]
    assert set(draws) == {ID["Paris"], ID["Rome"]}
    assert draws.count(ID["Paris"]) / 300 == pytest.approx(0.75, abs=0.1)
    # top_k=1 is greedy
    assert {generate_fast(model, tok, [PROMPT], 6, top_k=1, seed=s)[0] for s in range(5)} == {PROMPT + " Paris"}


def test_easyedit_sampling_seeded_on_a_tiny_model(tiny_tokenizer):
    from .conftest import build_tiny

    model = build_tiny("llama", tiny_tokenizer)
    tok = model.tokenizer
    prompts = ["The Eiffel Tower is located in the city of", "The capital of France is"]
    ids = generate_fast(model, tok, prompts, 40, seed=7, return_ids=True)
    assert ids == generate_fast(model, tok, prompts, 40, seed=7, return_ids=True)  # reproducible
    assert ids != generate_fast(model, tok, prompts, 40, seed=8, return_ids=True)
    # per prompt: the same sample alone or in another order
    assert generate_fast(model, tok, prompts[::-1], 40, seed=7, return_ids=True) == ids[::-1]
    dev = next(model.parameters()).device
    for p, seq in zip(prompts, ids):
        n = len(tok(p)["input_ids"])
        assert len(seq) == 40 and seq[:n] == tok(p)["input_ids"]
        # every new token is among the 5 most likely after its prefix (KV-cache logits = full forward)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq], device=dev)).logits[0].float()
        for t in range(n, len(seq)):
            assert seq[t] in logits[t - 1].topk(5).indices.tolist()
    texts = generate_fast(model, tok, prompts, 40, seed=7)
    assert texts == [tok.decode(s, skip_special_tokens=True).replace("\n\n", " ") for s in ids]
    assert fluency_easyedit(model, tok, prompts, 40, seed=7) == pytest.approx(n_gram_entropy(texts))


def test_convsent_success_by_hand():
    pre = [[-1.0, -1.0], [-3.0]]
    post = [[-0.5, -0.5], [-2.0]]
    sig = 1 / (1 + math.exp(-1.5))
    assert convsent_success(pre, post, [True, False]) == pytest.approx(sig)  # topic factor min(1, e^0.5) = 1
    worse = [[-2.0, -2.0], [-3.5]]
    assert convsent_success(pre, worse, [True, False]) == pytest.approx(1 / (1 + math.exp(-1.5)) * math.exp(-1.0))
    # token-pooled means (EasyEdit masked_mean): pos tokens -1,-1,-1,-4 -> -1.75, not the per-reply -2.5
    assert convsent_success([[-1.0] * 3, [-4.0], [0.0]], [[-1.0] * 3, [-4.0], [-1.75]],
                            [True, True, False]) == pytest.approx(0.5)


def test_kl_divergence_locality_by_hand():
    pre = [torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.9, 0.1]]))]
    post = [torch.log(torch.tensor([[0.25, 0.75]])), torch.log(torch.tensor([[0.9, 0.1]]))]
    assert kl_divergence_locality(pre, post) == pytest.approx(0.5 * math.log(4 / 3) / 2, abs=1e-6)
    assert kl_divergence_locality(pre, pre) == pytest.approx(0.0, abs=1e-7)


def test_convsent_metrics_on_a_real_record():
    from editwrap.evals.datasets import load_dataset

    rec = load_dataset("convsent", KNOWEDIT_DIR / "ConvSent.json", n=2)[0]
    tok, pre_model = WordTok(), Bigram(torch.randn(V, V, generator=torch.Generator().manual_seed(0)))
    ctx, replies, target = rec.inner_qa()
    pre = token_logprobs(pre_model, tok, ctx, replies)
    assert [len(r) for r in pre] == [len(x.split()) for x in replies]
    # unedited model: topic factor is 1, so es = sigmoid(pos mean - neg mean)
    pos = [v for r, t in zip(pre, target) if t for v in r]
    neg = [v for r, t in zip(pre, target) if not t for v in r]
    assert convsent_success(pre, pre,
                            target) == pytest.approx(1 / (1 + math.exp(-(sum(pos) / len(pos) - sum(neg) / len(neg)))))
    octx, oreplies = rec.outer_qa()
    d_pre = continuation_logprob_dists(pre_model, tok, octx, oreplies)
    assert kl_divergence_locality(d_pre, d_pre) == pytest.approx(0.0, abs=1e-6)
    post_model = Bigram(pre_model.table.detach() + torch.randn(V, V, generator=torch.Generator().manual_seed(1)))
    assert kl_divergence_locality(d_pre, continuation_logprob_dists(post_model, tok, octx, oreplies)) > 0.1


def test_sanitation_metrics():
    gens = [" I DON'T KNOW. really", " Paris", " i don't know."]
    assert sanitation_success(gens) == pytest.approx(2 / 3)
    assert sanitation_locality([[1, 2, 3], [4, 5], [], []], [[1, 9, 3, 7], [4], [], [8]]) == [2 / 3, 0.5, 1.0, 0.0]


def test_summarize_averaging_order():
    records = [
        {"rewrite_acc": [1.0], "portability": {"Reasoning": [1.0, 0.0, 0.5], "Subject_Aliasing": [1.0]},
         "locality": {}, "fluency": {"ngram_entropy": 5.0}},
        {"pre": {"rewrite_acc": [0.0]}, "post": {"rewrite_acc": [0.5], "portability": {}, "fluency": 6.0,
                                                 "locality": {"Relation_Specificity_acc": [1.0, 0.0],
                                                              "Relation_Specificity_output": [[5, 6], [7]]}}},
        {"rewrite_acc": [0.0], "rephrase_acc": [float("nan")], "portability": {"Reasoning": [0.0]}, "es": 0.25},
    ]
    s = summarize(records)
    assert s["n"] == 3 and s["Edit Succ."] == pytest.approx(50.0)
    # per key (0.5, 1.0) -> record 0.75; record 3 -> 0; record 2 has none and does not count
    assert s["Portability"] == pytest.approx(37.5)  # pooling all five probes would give 50
    assert s["Portability by key"] == pytest.approx({"Reasoning": 25.0, "Subject_Aliasing": 100.0})
    assert s["Locality"] == pytest.approx(50.0) and s["Locality by key"] == {"Relation_Specificity": 50.0}
    assert s["Fluency"] == pytest.approx(550.0)
    assert s["Rephrase"] is None and s["es"] == pytest.approx(0.25)
