import torch

from ctal_ds.model import CTALForPretraining


def loss_and_grads(config, batch):
    torch.manual_seed(0)
    model = CTALForPretraining(config).train()
    torch.manual_seed(1)  # same dropout masks in both runs
    out = model(batch)
    out["loss"].backward()
    return out["loss"].detach(), {n: p.grad for n, p in model.named_parameters()}


def test_checkpointed_layers_give_the_same_gradients(tiny_config, batch):
    # With dropout on, equal gradients also show that recomputation replays the RNG.
    config = tiny_config.replace(dropout=0.1)
    loss_plain, grads_plain = loss_and_grads(config, batch)
    loss_ckpt, grads_ckpt = loss_and_grads(config.replace(activation_checkpointing=True), batch)
    assert loss_ckpt == loss_plain
    for name, g in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], g, atol=0, rtol=0, msg=name)


def test_checkpointing_recomputes_layers_in_backward(tiny_config, batch):
    torch.manual_seed(0)
    model = CTALForPretraining(tiny_config.replace(activation_checkpointing=True)).train()
    calls = []
    # A pre-hook: recomputation stops early, once it has rebuilt what backward needs.
    model.ctal.audio_encoder.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    model(batch)["loss"].backward()
    assert len(calls) == 2
    with torch.no_grad():
        model(batch)
    assert len(calls) == 3
