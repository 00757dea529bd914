"""The forecasting network: input adapter, shared backbone, direct multi-step head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from gru_suite.backbone import GRUBackbone
from gru_suite.config import check_choice
from gru_suite.errors import UserError
from gru_suite.task import BackboneFactory


NORMALIZE = ("none", "last")
"""`task.model.normalize`: none, or each window taken relative to its last value."""


class Forecaster(nn.Module):
    """Maps a lookback window (B, L, F) to a forecast (B, horizon, targets), all scaled.

    `segment_length=1` feeds one time step per GRU step (the classic setup);
    larger values cut the window into segments embedded by a linear layer, so
    the GRU runs L / segment_length steps (SegRNN). `channel_independent` runs
    every variable as its own univariate series through shared weights.
    `normalize="last"` forecasts relative to the window's last value.
    """

    def __init__(
        self,
        backbone: BackboneFactory,
        n_features: int,
        target_columns: Sequence[int],
        lookback: int,
        horizon: int,
        segment_length: int = 1,
        embed_size: int | None = None,
        channel_independent: bool = False,
        normalize: Literal["none", "last"] = "none",
        head_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if lookback % segment_length:
            raise UserError(f"task.model.segment_length={segment_length} must divide task.data.lookback={lookback}")
        check_choice(normalize, NORMALIZE, "task.model.normalize")
        self.target_columns = list(target_columns)
        self.horizon = horizon
        self.segment_length = segment_length
        self.channel_independent = channel_independent
        self.normalize = normalize
        channels = 1 if channel_independent else n_features
        segment_size = segment_length * channels
        if embed_size:
            self.adapter: nn.Module = nn.Sequential(nn.Linear(segment_size, embed_size), nn.ReLU())
        else:
            self.adapter = nn.Identity()
        self.backbone: GRUBackbone = backbone(input_size=embed_size or segment_size)
        outputs_per_sequence = horizon * (1 if channel_independent else len(self.target_columns))
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(self.backbone.output_size, outputs_per_sequence))

    def forward(self, x: Tensor) -> Tensor:
        batch, steps, features = x.shape
        last = x[:, -1:, :]
        if self.normalize == "last":
            x = x - last
        if self.channel_independent:
            x = x.transpose(1, 2).reshape(batch * features, steps, 1)
        segments = x.reshape(x.size(0), steps // self.segment_length, -1)
        _, h_n = self.backbone(self.adapter(segments))
        out = self.head(self.backbone.last_hidden(h_n))
        if self.channel_independent:
            out = out.reshape(batch, features, self.horizon).transpose(1, 2)[:, :, self.target_columns]
        else:
            out = out.reshape(batch, self.horizon, len(self.target_columns))
        if self.normalize == "last":
            out = out + last[:, :, self.target_columns]
        return out
