"""Task heads (src/llmkit/heads.py): the classifier head replaces the output layer of one
Transformer, reads each text's last real token, and round-trips through a checkpoint."""

import torch

from llmkit.checkpoint import load_model, save_model
from llmkit.heads import attach_class_head, class_logits
from llmkit.recipes.classify import collate


def test_right_padding_does_not_change_a_texts_logits(tiny_model_dir):
    net = load_model(tiny_model_dir(), dtype=torch.float32).model.eval()
    torch.manual_seed(0)
    attach_class_head(net, 3)
    short, long = [5, 9, 30, 41], [7, 8, 9, 10, 11, 12, 13]
    idx, mask = collate([short, long], pad_id=0)
    with torch.no_grad():
        both = class_logits(net, idx, mask)
        alone = class_logits(net, torch.tensor([short]), torch.ones(1, 4, dtype=torch.long))
    assert both.shape == (2, 3) and torch.allclose(both[0], alone[0], atol=1e-6)


def test_the_head_unties_the_output_layer_and_loads_back_as_a_classifier(tiny_model_dir, tmp_path):
    import json

    net = load_model(tiny_model_dir(), dtype=torch.float32).model.eval()
    attach_class_head(net, 4)
    assert net.lm_head.weight.shape == (4, net.cfg.n_embd) and net.lm_head.bias is not None
    assert net.cfg.tie_embeddings is False and net.lm_head.weight is not net.embed.weight
    save_model(tmp_path / "clf", net, extra={"classifier.json": {"labels": ["a", "b", "c", "d"]}})
    loaded = load_model(tmp_path / "clf")
    assert loaded.classifier == {"labels": ["a", "b", "c", "d"]}
    x = torch.tensor([[5, 9, 30]])
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net(x))  # (1, 4): the class head, not the vocabulary
        assert net(x).shape == (1, 4)
    assert json.loads((tmp_path / "clf" / "config.json").read_text())["tie_embeddings"] is False
