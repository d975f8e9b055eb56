"""Encoder-decoders (T5 v1.0, T5 v1.1 / Flan-T5, BART) in the one model: logits parity with
transformers in both directions on tiny random configs, padded sources, and the cache
invariants (cross-attention keys/values computed once, cached decoding == full forward)."""

import pytest
import torch

from llmkit.checkpoint import from_hf, load_model, to_hf
from llmkit.config import ModelConfig

V = 140
FAMILIES = ["t5", "t5v1.1", "bart"]


def tiny_hf_config(family: str, vocab: int = V, **kw):
    import transformers as T

    if kw:
        c = tiny_hf_config(family, vocab)
        for k, v in kw.items():
            setattr(c, k, v)
        return c
    V = vocab
    if family in ("t5", "t5v1.1"):
        v11 = family == "t5v1.1"
        return T.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
                          relative_attention_num_buckets=8, relative_attention_max_distance=20,
                          feed_forward_proj="gated-gelu" if v11 else "relu", tie_word_embeddings=not v11,
                          dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T.BartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)


def make_hf(family: str, seed: int = 0, vocab: int = V, **kw):
    import transformers as T

    torch.manual_seed(seed)
    model = T.AutoModelForSeq2SeqLM.from_config(tiny_hf_config(family, vocab, **kw), attn_implementation="eager").eval()
    V = vocab
    with torch.no_grad():  # every tensor random, norms and biases included: a swapped name shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        if family == "t5v1.1":  # transformers 5 ties T5's head anyway; v1.1's is its own matrix
            model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32) * 0.3)
        if family == "bart":
            model.final_logits_bias.normal_()
    return model


def batch(seed: int = 1, B: int = 3, S: int = 15, T: int = 9):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, V, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 10:] = 0  # right-padded sources
    mask[2, 4:] = 0
    src[mask == 0] = 0
    dec = torch.randint(3, V, (B, T), generator=g)
    return src, mask, dec


def hf_logits(model, src, mask, dec):
    return model(input_ids=src, attention_mask=mask, decoder_input_ids=dec).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_from_hf_parity(family, tmp_path):
    theirs = make_hf(family)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").model
    assert ours.cfg.is_seq2seq and ours.cfg.n_encoder_layer == 2 and ours.cfg.n_layer == 3
    assert ours.cfg.tie_embeddings == (family != "t5v1.1")
    src, mask, dec = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(dec, src=src, src_mask=mask), hf_logits(theirs, src, mask, dec),
                                   atol=1e-4, rtol=1e-4)
        # the encoder alone, at real source tokens
        enc = theirs.get_encoder()(input_ids=src, attention_mask=mask).last_hidden_state
        m = mask.bool()
        torch.testing.assert_close(ours.encode(src, mask)[m], enc[m], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_to_hf_parity_through_an_llmkit_checkpoint(family, tmp_path):
    """HF -> llmkit checkpoint -> HF: AutoModelForSeq2SeqLM loads the export with our outputs."""
    import transformers as T

    make_hf(family, seed=3).save_pretrained(tmp_path / "hf")
    from_hf(str(tmp_path / "hf"), str(tmp_path / "native"))
    native = load_model(tmp_path / "native")
    assert native.kind == "llmkit"
    to_hf(str(tmp_path / "native"), str(tmp_path / "back"))
    back, info = T.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "back", attn_implementation="eager",
                                                         output_loading_info=True)
    back.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # exactly HF's tensors
    src, mask, dec = batch(seed=4)
    with torch.no_grad():
        torch.testing.assert_close(native.model(dec, src=src, src_mask=mask), hf_logits(back, src, mask, dec),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_fresh_llmkit_model_exports(family, tmp_path):
    """A model built in llmkit (no HF origin) exports and loads with the same logits."""
    import transformers as T

    from llmkit.checkpoint import save_hf
    from llmkit.model import Transformer

    hf_cfg = tiny_hf_config(family)
    from llmkit.convert.hf import config_from_hf

    cfg = config_from_hf(hf_cfg.to_dict()).replace(hf_model_type=None)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_hf(tmp_path / "out", model)
    back, info = T.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "out", attn_implementation="eager",
                                                         output_loading_info=True)
    back.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    src, mask, dec = batch(seed=5)
    with torch.no_grad():
        torch.testing.assert_close(model(dec, src=src, src_mask=mask), hf_logits(back, src, mask, dec),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_the_full_forward(family):
    """The encoder runs once into the cache (cross keys/values per layer); feeding the decoder
    one token at a time gives the logits of the whole-sequence forward, rows at their own
    sources (padded) decoding together."""
    from llmkit.convert.hf import config_from_hf
    from llmkit.model import Transformer

    cfg = config_from_hf(tiny_hf_config(family).to_dict())
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    src, mask, dec = batch(seed=6)
    with torch.no_grad():
        full = model(dec, src=src, src_mask=mask)
        cache = model.new_cache(3, 16, src_len=20)
        model.prefill_source(src, mask, cache)
        steps = [model(dec[:, t:t + 1], torch.tensor([t]), cache) for t in range(dec.shape[1])]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
        # a row alone gives its batched logits
        cache1 = model.new_cache(1, 16, src_len=20)
        model.prefill_source(src[2:, :4], mask[2:, :4], cache1)
        alone = torch.cat([model(dec[2:, t:t + 1], torch.tensor([t]), cache1) for t in range(dec.shape[1])], 1)
        torch.testing.assert_close(alone, full[2:], atol=1e-5, rtol=1e-5)


def test_relative_bias_buckets_equal_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    from llmkit.model import RelativeBias

    rel = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for n, dist in ((32, 128), (8, 20)):
            bias = RelativeBias(ModelConfig(n_layer=1, n_embd=8, n_head=2, vocab_size=10, pos="relative",
                                            rel_buckets=n, rel_max_distance=dist), bidirectional)
            theirs = T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=n,
                                                           max_distance=dist)
            assert torch.equal(bias.buckets(rel), theirs)


def test_seq2seq_forward_without_a_source_is_refused():
    from llmkit.model import Transformer

    cfg = ModelConfig(n_layer=1, n_encoder_layer=1, n_embd=16, n_head=2, vocab_size=50, pos="relative")
    with pytest.raises(ValueError, match="needs its source"):
        Transformer(cfg)(torch.zeros(1, 3, dtype=torch.long))


# --- generation -----------------------------------------------------------------------------------
GEN_V = 320  # the test tokenizer's vocabulary


def _gen_setup(family, tmp_path, seed=0, **kw):
    from tests.helpers import build_tokenizer

    # Equal depths: transformers 5's generate cache sizes itself by the encoder's depth for T5.
    depth = {"num_decoder_layers": 2} if family.startswith("t5") else {"decoder_layers": 2}
    theirs = make_hf(family, seed=seed, vocab=GEN_V, **depth)
    for k, v in kw.items():  # forced tokens: transformers 5 keeps them in generation_config.json
        setattr(theirs.generation_config, k, v)
    theirs.save_pretrained(tmp_path / "hf")
    tok = build_tokenizer(tmp_path / "tok", vocab_size=GEN_V)
    return theirs, load_model(tmp_path / "hf").model.eval(), tok


def _sources(n=4, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, GEN_V, (int(L),), generator=g).tolist() for L in torch.randint(3, 14, (n,), generator=g)]


@pytest.mark.parametrize("family,kw", [("t5", {}), ("t5v1.1", {}), ("bart", {}),
                                       ("bart", dict(forced_bos_token_id=0, forced_eos_token_id=2))])
def test_greedy_generation_is_token_identical_to_transformers(family, kw, tmp_path):
    """Greedy decoding (encoder once, cross keys/values cached, one decoder token per step)
    gives transformers' `generate` tokens, one source at a time and all sources in one batch."""
    from llmkit.generate import generate, generate_batch

    theirs, ours, tok = _gen_setup(family, tmp_path, **kw)
    eos = theirs.config.eos_token_id
    srcs = _sources()
    expected = []
    for src in srcs:
        out = theirs.generate(torch.tensor([src]), max_new_tokens=10, do_sample=False, num_beams=1,
                              eos_token_id=eos, pad_token_id=theirs.config.pad_token_id)
        ids = out[0, 1:].tolist()  # after the decoder-start token
        expected.append(ids[: ids.index(eos) + 1] if eos in ids else ids)
    alone = [generate(ours, tok, src, max_new_tokens=10, stop_ids={eos}).token_ids for src in srcs]
    assert alone == expected
    together = [c.token_ids for c in generate_batch(ours, tok, srcs, max_new_tokens=10, stop_ids={eos})]
    assert together == expected


def test_streaming_and_sampling_on_an_encoder_decoder(tmp_path):
    from llmkit.generate import generate, stream

    _, ours, tok = _gen_setup("t5v1.1", tmp_path, seed=4)
    src = _sources(1)[0]
    s = stream(ours, tok, src, max_new_tokens=8, stop_ids=set())
    text = "".join(s)
    full = generate(ours, tok, src, max_new_tokens=8, stop_ids=set())
    assert text == full.text and s.completion.token_ids == full.token_ids and len(full.token_ids) == 8
    a = generate(ours, tok, src, max_new_tokens=8, temperature=1.0, seed=3, stop_ids=set())
    b = generate(ours, tok, src, max_new_tokens=8, temperature=1.0, seed=3, stop_ids=set())
    c = generate(ours, tok, src, max_new_tokens=8, temperature=1.0, seed=4, stop_ids=set())
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


@pytest.mark.parametrize("family,kw", [("t5v1.1", {}), ("bart", dict(forced_bos_token_id=0, forced_eos_token_id=2))])
@pytest.mark.parametrize("num_beams,length_penalty,early_stopping", [(4, 1.0, False), (3, 2.0, True), (2, 0.6, "never")])
def test_beam_search_is_token_identical_to_transformers(family, kw, num_beams, length_penalty, early_stopping,
                                                        tmp_path):
    """What summarization users run: beam search with a length penalty, on an encoder-decoder
    (the source encoded once, every beam's rows sharing its cross-attention keys/values)."""
    from llmkit.generate import beam_search, beam_search_batch

    theirs, ours, tok = _gen_setup(family, tmp_path, seed=7, **kw)
    eos = theirs.config.eos_token_id
    srcs = _sources(3, seed=9)
    alone = []
    for src in srcs:
        out = theirs.generate(torch.tensor([src]), max_new_tokens=9, do_sample=False, num_beams=num_beams,
                              length_penalty=length_penalty, early_stopping=early_stopping, num_return_sequences=2,
                              eos_token_id=eos, pad_token_id=theirs.config.pad_token_id, output_scores=True,
                              return_dict_in_generate=True)
        mine = beam_search(ours, tok, src, num_beams=num_beams, max_new_tokens=9, length_penalty=length_penalty,
                           early_stopping=early_stopping, num_return_sequences=2, stop_ids={eos})
        for row, r in zip(out.sequences, mine):
            ids = [t for t in row[1:].tolist()]
            ids = ids[: ids.index(eos) + 1] if eos in ids else ids
            assert r.token_ids == ids
        torch.testing.assert_close(torch.tensor([r.score for r in mine]), out.sequences_scores, atol=1e-4, rtol=1e-4)
        alone.append([r.token_ids for r in mine])
    together = beam_search_batch(ours, tok, srcs, num_beams=num_beams, max_new_tokens=9, length_penalty=length_penalty,
                                 early_stopping=early_stopping, num_return_sequences=2, stop_ids={eos})
    assert [[r.token_ids for r in rs] for rs in together] == alone


def test_generate_cli_greedy_and_beams(tmp_path, capsys):
    from llmkit.generate import beam_search, generate, load_for_inference
    from tests.helpers import build_seq2seq_dir, cli_error, cli_run

    d = build_seq2seq_dir(tmp_path, "t5v1.1")
    loaded, tok = load_for_inference(str(d))
    code, out, err = cli_run(capsys, ["generate", str(d), "--prompt", "the quick fox", "--max_new_tokens", "6",
                                      "--temperature", "0"])
    assert code == 0, err
    assert out == generate(loaded.model, tok, "the quick fox", max_new_tokens=6).text + "\n"
    code, out, err = cli_run(capsys, ["generate", str(d), "--prompt", "the quick fox", "--max_new_tokens", "6",
                                      "--temperature", "0", "--num-beams", "3", "--length-penalty", "2.0"])
    assert code == 0, err
    best = beam_search(loaded.model, tok, "the quick fox", num_beams=3, max_new_tokens=6, length_penalty=2.0)[0]
    assert out == best.text + "\n" and "3 beams" in err
    cli_error(capsys, ["generate", str(d), "--prompt", "x", "--num-beams", "2", "--temperature", "0.7"],
              "deterministic")


def test_activation_checkpointing_gives_the_same_gradients():
    """--train.activation_checkpointing recomputes both stacks' blocks: same loss, same grads."""
    from llmkit.model import Transformer

    torch.manual_seed(0)
    m = Transformer(ModelConfig.from_name("tiny-t5")).train()
    src, mask, dec = batch(seed=8)
    m(dec, src=src, src_mask=mask).float().pow(2).mean().backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.gradient_checkpointing = m.encoder.gradient_checkpointing = True
    m(dec, src=src, src_mask=mask).float().pow(2).mean().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-6, rtol=1e-5, msg=n)


def test_the_decoder_learns_to_read_the_source():
    """Copying random tokens can only be learned through cross-attention: after 400 steps the
    cached greedy decoder reproduces most sources (a source-blind decoder scores ~1/60)."""
    from llmkit.model import Transformer
    from llmkit.training.losses import seq2seq_loss

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-t5", vocab_size=64)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def copy_batch(B):
        src = torch.cat([torch.randint(3, 64, (B, 6)), torch.ones(B, 1, dtype=torch.long)], 1)  # ... </s>
        idx = torch.cat([torch.zeros(B, 1, dtype=torch.long), src[:, :-1]], 1)  # decoder start 0
        return {"src": src, "src_mask": torch.ones_like(src), "idx": idx, "labels": src.clone()}

    for _ in range(400):
        loss = seq2seq_loss(model, copy_batch(32))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    b = copy_batch(16)
    with torch.no_grad():
        cache = model.new_cache(16, 8, src_len=7)
        model.prefill_source(b["src"], b["src_mask"], cache)
        tok, out = torch.zeros(16, 1, dtype=torch.long), []
        for t in range(7):
            tok = model(tok, torch.tensor([t]), cache)[:, -1:].argmax(-1)
            out.append(tok)
    assert (torch.cat(out, 1) == b["labels"]).float().mean() > 0.7
