"""Layer fusion inside a Hugging Face encoder-decoder model (BART, T5, Marian, mBART, ...).

:func:`fuse_encoder_layers` installs a :class:`~compactnn.encdec.fusion.LayerFusion` in a
built or pretrained model with hooks, without copying or re-wrapping anything:

- each encoder layer's output is kept; the one before the last is passed through the
  encoder's final norm when it has one (the state the decoder would read had the stack
  ended there), and the last source is the encoder's *actual* output (final norm and
  dropout included). The stack, ``(batch, S, length, width)``, travels in the encoder's
  output under ``"fusion_states"``, so ``generate`` expands it for beams and sampling
  like every other tensor of that output;
- decoder layer ``j`` receives ``sum_s W[j, s] * state_s`` as its
  ``encoder_hidden_states``. Its cross-attention keys and values are computed from that
  memory once and cached as usual.

With ``init="last"`` the model computes exactly what it computed before, in training and
in evaluation mode, because the last source is the very tensor the decoder used to read
and ``1 * x + 0 * y`` is exact.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from compactnn._checks import check_choice

from .fusion import FUSION_INITS, LayerFusion

__all__ = ["ATTRIBUTE", "EncoderLayerFusion", "fuse_encoder_layers"]

#: The name under which the fusion is registered on the model (its weight is saved in the
#: model's ``state_dict`` as ``encoder_layer_fusion.fusion.weight``).
ATTRIBUTE = "encoder_layer_fusion"
STATES_KEY = "fusion_states"
# The encoder's final norm, by the names the HF encoder-decoder families give it.
_FINAL_NORM_NAMES = ("final_layer_norm", "layer_norm", "norm", "ln_f")


def _layer_list(stack: nn.Module, what: str) -> nn.ModuleList:
    lists = [m for m in stack.children() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if len(lists) != 1:
        raise ValueError(f"cannot find the {what}'s layer list: {type(stack).__name__} has "
                         f"{len(lists)} non-empty nn.ModuleList children, expected 1")
    return lists[0]


def _final_norm(encoder: nn.Module) -> nn.Module | None:
    for name in _FINAL_NORM_NAMES:
        m = getattr(encoder, name, None)
        if isinstance(m, nn.Module) and "norm" in type(m).__name__.lower():
            return m
    return None


def _hidden(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    first = output[0] if isinstance(output, (tuple, list)) else getattr(output, "last_hidden_state",
                                                                        None)
    if not isinstance(first, Tensor):
        raise TypeError(f"cannot read the hidden states from a {type(output).__name__}")
    return first


class EncoderLayerFusion(nn.Module):
    """The installed fusion of one model; ``fusion`` holds the learned ``(T, S)`` weight.

    Made by :func:`fuse_encoder_layers`; :meth:`remove` restores the model.
    """

    def __init__(self, model: nn.Module, fusion: LayerFusion) -> None:
        super().__init__()
        self.fusion = fusion
        self._model_ref = [model]  # a list, so that the model is not a submodule of this
        self._handles: list[RemovableHandle] = []
        self._hidden: list[Tensor] = []
        self._states: Tensor | None = None
        self._memories: list[Tensor] | None = None
        self._decoder_enc_pos = 0  # position of encoder_hidden_states, set by install()

    # -- encoder side ------------------------------------------------------------------

    def _encoder_start(self, _module: nn.Module, _args: Any) -> None:
        self._hidden = []
        self._states = None

    def _encoder_layer_done(self, _module: nn.Module, _args: Any, output: Any) -> None:
        self._hidden.append(_hidden(output))

    def _encoder_done(self, module: nn.Module, _args: Any, output: Any) -> Any:
        hidden, self._hidden = self._hidden, []
        if len(hidden) != self.fusion.num_sources:
            raise RuntimeError(f"the encoder ran {len(hidden)} of its "
                               f"{self.fusion.num_sources} layers (LayerDrop is not supported "
                               "with layer fusion: set config.encoder_layerdrop = 0)")
        norm = _final_norm(module)
        last = _hidden(output)
        earlier = [norm(h) if norm is not None else h for h in hidden[:-1]]
        states = torch.stack([*earlier, last], dim=1)
        self._states = states
        if isinstance(output, dict):
            output[STATES_KEY] = states
        return output

    # -- top level: the encoder may have run in an earlier call (generate) ---------------

    def _model_start(self, _module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        self._states = None
        self._memories = None
        enc = kwargs.get("encoder_outputs")
        if enc is not None:
            states = enc.get(STATES_KEY) if isinstance(enc, dict) else None
            if not isinstance(states, Tensor):
                raise ValueError("encoder_outputs were made without the layer fusion's states "
                                 f"(no {STATES_KEY!r} entry): run the encoder of the fused "
                                 "model, or pass input_ids instead of encoder_outputs")
            self._states = states

    def _model_done(self, _module: nn.Module, _args: Any, _output: Any) -> None:
        self._states = None
        self._memories = None

    # -- decoder side ------------------------------------------------------------------

    def _decoder_start(self, _module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        enc = kwargs.get("encoder_hidden_states")
        if enc is None and len(args) > self._decoder_enc_pos:
            enc = args[self._decoder_enc_pos]
        states = self._states
        if enc is None:
            self._memories = None
            return
        if (states is None or states.shape[0] != enc.shape[0]
                or states.shape[2:] != enc.shape[1:] or not torch.equal(states[:, -1], enc)):
            raise ValueError("the decoder was given encoder_hidden_states that the fused "
                             "encoder did not produce in this call; call the whole model "
                             "(or its generate) rather than the decoder alone")
        fused = self.fusion(states.transpose(0, 1))
        self._memories = list(fused.unbind(0))

    def _decoder_layer_start(self, index: int, signature: inspect.Signature,
                             args: Any, kwargs: dict[str, Any]) -> Any:
        if self._memories is None:
            return None
        bound = signature.bind_partial(*args, **kwargs)
        if bound.arguments.get("encoder_hidden_states") is None:
            return None
        bound.arguments["encoder_hidden_states"] = self._memories[index]
        return bound.args, bound.kwargs

    def install(self, encoder: nn.Module, enc_layers: nn.ModuleList, decoder: nn.Module,
                dec_layers: nn.ModuleList) -> None:
        model = self._model_ref[0]
        h = self._handles
        h.append(model.register_forward_pre_hook(self._model_start, with_kwargs=True))
        h.append(model.register_forward_hook(self._model_done))
        h.append(encoder.register_forward_pre_hook(self._encoder_start))
        h.extend(layer.register_forward_hook(self._encoder_layer_done) for layer in enc_layers)
        h.append(encoder.register_forward_hook(self._encoder_done))
        params = list(inspect.signature(decoder.forward).parameters)
        self._decoder_enc_pos = params.index("encoder_hidden_states")
        h.append(decoder.register_forward_pre_hook(self._decoder_start, with_kwargs=True))
        for j, layer in enumerate(dec_layers):
            sig = inspect.signature(layer.forward)

            def hook(_mod: nn.Module, args: Any, kwargs: dict[str, Any], j: int = j,
                     sig: inspect.Signature = sig) -> Any:
                return self._decoder_layer_start(j, sig, args, kwargs)

            h.append(layer.register_forward_pre_hook(hook, with_kwargs=True))

    def remove(self) -> None:
        """Take the hooks and this module off the model; it computes as before again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        model = self._model_ref[0]
        if getattr(model, ATTRIBUTE, None) is self:
            delattr(model, ATTRIBUTE)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("EncoderLayerFusion works through hooks; call the model itself")


def fuse_encoder_layers(model: nn.Module, *, init: str = "last") -> EncoderLayerFusion:
    """Give every decoder layer of an HF encoder-decoder model a learned combination of
    all encoder layers' outputs.

    Args:
        model: a ``transformers`` encoder-decoder model (``config.is_encoder_decoder``,
            ``get_encoder()``/``get_decoder()``), e.g. ``BartForConditionalGeneration`` or
            ``T5ForConditionalGeneration``; changed in place.
        init: the fusion's initialization (:data:`~compactnn.encdec.FUSION_INITS`);
            ``"last"`` keeps the model's function exactly.

    Returns:
        the installed :class:`EncoderLayerFusion`, also registered on the model as
        ``model.encoder_layer_fusion`` so that ``model.parameters()``, ``state_dict`` and
        ``.to()`` include it. Hugging Face's ``from_pretrained`` does not know it: after
        loading, call this function again and load the saved ``state_dict``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_choice("init", init, FUSION_INITS)
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False) or not (
            hasattr(model, "get_encoder") and hasattr(model, "get_decoder")):
        raise TypeError(f"model must be a Hugging Face encoder-decoder model "
                        f"(config.is_encoder_decoder), got {type(model).__name__}")
    if hasattr(model, ATTRIBUTE):
        raise ValueError(f"model already has a layer fusion ({ATTRIBUTE}); call its "
                         "remove() first")
    encoder, decoder = model.get_encoder(), model.get_decoder()
    enc_layers = _layer_list(encoder, "encoder")
    dec_layers = _layer_list(decoder, "decoder")
    if "encoder_hidden_states" not in inspect.signature(decoder.forward).parameters:
        raise TypeError(f"{type(decoder).__name__}.forward takes no encoder_hidden_states")
    for layer in dec_layers:
        if "encoder_hidden_states" not in inspect.signature(layer.forward).parameters:
            raise TypeError(f"{type(layer).__name__}.forward takes no encoder_hidden_states")
    p = next(model.parameters())
    fusion = LayerFusion(len(enc_layers), len(dec_layers), init=init).to(p.device, p.dtype)
    handle = EncoderLayerFusion(model, fusion)
    handle.install(encoder, enc_layers, decoder, dec_layers)
    model.add_module(ATTRIBUTE, handle)
    return handle
