"""Each built-in layer's forward written in PyTorch, independently of derive/: the peer whose
autograd the derived gradients are compared with. Returns {output name: tensor}."""

from __future__ import annotations



def forward(name: str, t: dict):
    import torch
    import torch.nn.functional as F

    if name == "linear":
        return {"y": t["x"] @ t["W"] + t["b"]}
    if name == "relu":
        return {"y": torch.relu(t["x"])}
    if name == "tanh":
        return {"y": torch.tanh(t["x"])}
    if name == "sigmoid":
        return {"y": torch.sigmoid(t["x"])}
    if name == "gelu":
        return {"y": F.gelu(t["x"], approximate="tanh")}
    if name == "gelu_erf":
        return {"y": F.gelu(t["x"])}
    if name == "softmax":
        return {"s": torch.softmax(t["x"], -1)}
    if name == "log_softmax":
        return {"y": torch.log_softmax(t["x"], -1)}
    if name == "cross_entropy":
        return {"loss": F.cross_entropy(t["logits"], t["targets"])}
    if name == "mse":
        return {"loss": F.mse_loss(t["pred"], t["target"])}
    if name == "layernorm":
        return {"y": F.layer_norm(t["x"], t["x"].shape[-1:], t["gamma"], t["beta"], eps=1e-5)}
    if name == "embedding":
        return {"rows": t["table"][t["ids"]]}
    if name == "attention":
        return {"y": F.scaled_dot_product_attention(t["q"], t["k"], t["v"], is_causal=True)}
    if name == "attention_heads":  # (B, T, H, D) in and out; SDPA takes (B, H, T, D)
        q, k, v = (t[n].transpose(1, 2) for n in "qkv")
        return {"y": F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)}
    if name == "multihead_attention":
        x = t["x"]
        B, T, C = x.shape
        H, D = t["bq"].shape

        def heads(W, b):
            return (x @ W.reshape(C, C) + b.reshape(C)).view(B, T, H, D).transpose(1, 2)

        q, k, v = heads(t["Wq"], t["bq"]), heads(t["Wk"], t["bk"]), heads(t["Wv"], t["bv"])
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = att.transpose(1, 2).reshape(B, T, C) @ t["Wo"].reshape(C, C) + t["bo"]
        return {"y": y}
    if name == "rnn_cell":
        return {"h": torch.tanh(t["x"] @ t["Wxh"] + t["h_prev"] @ t["Whh"] + t["bh"])}
    if name == "lstm_cell":
        xh = torch.cat([t["x"], t["h_prev"]], dim=1)
        H = t["h_prev"].shape[1]
        z = xh @ t["W"].reshape(-1, 4 * H) + t["b"].reshape(4 * H)
        i, f, o, g = z.split(H, dim=1)
        c = torch.sigmoid(f) * t["c_prev"] + torch.sigmoid(i) * torch.tanh(g)
        return {"h": torch.sigmoid(o) * torch.tanh(c), "c": c}
    if name == "residual":
        return {"y": t["a"] + t["b"]}
    if name.startswith(("conv1d", "conv2d", "max_pool2d", "avg_pool2d")):
        return {"y": _vision(name, t)}
    if name == "flatten":
        return {"y": torch.flatten(t["x"], 1)}
    raise KeyError(f"no PyTorch reference for layer '{name}': add it to tests/torch_layers.py")


def _vision(name: str, t: dict):
    """A convolution or pooling layer in any configuration (conv2d_s2_p1_d2: the constants come
    from derive.registry, which reads them off the name)."""
    import torch.nn.functional as F
    from derive import registry

    c = registry.constants(name)
    if name.startswith("conv"):
        conv = F.conv1d if name.startswith("conv1d") else F.conv2d
        return conv(t["x"], t["w"], t["b"], stride=c["stride"], padding=c["padding"], dilation=c["dilation"])
    pool = F.max_pool2d if name.startswith("max") else F.avg_pool2d
    return pool(t["x"], c["kernel"], c["stride"])
