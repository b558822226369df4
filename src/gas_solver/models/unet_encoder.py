"""The encoder half of an unconditional diffusers ``UNet2DModel`` as a feature module: what
:meth:`DiffusersUNetModel.feature_encoder <gas_solver.models.diffusers.DiffusersUNetModel.feature_encoder>`
returns (see :meth:`DiffusionModel.feature_encoder <gas_solver.models.base.DiffusionModel.feature_encoder>`
for the contract).

The features are the outputs of every down block and of the mid block, run on samples at a given
network timestep. The UNet stays frozen; gradients flow to the input, twice over (the R1/R2
penalties of a discriminator on these features differentiate twice, and only the math attention
kernel has a double backward).
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel


class UNetEncoder(nn.Module):
    """``(x, timestep) → [h_1, …, h_L]``: the down blocks' and the mid block's activations.

    Args:
        unet: an unconditional diffusers ``UNet2DModel`` (frozen).

    Attributes:
        widths: the channels of each feature map, in order.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        widths = [int(block.resnets[-1].out_channels) for block in unet.down_blocks]
        self.widths = (*widths, int(unet.mid_block.resnets[-1].out_channels))

    def forward(self, x: Tensor, timestep: Tensor) -> list[Tensor]:
        """Feature maps ``(B, C_l, H_l, W_l)`` of ``x: (B, C, H, W)`` at the network timestep
        ``timestep: (1,)`` (the same for every sample)."""
        unet = self.unet
        timesteps = timestep.to(x.device).expand(x.shape[0])
        emb = unet.time_embedding(unet.time_proj(timesteps).to(x.dtype))
        h, feats = unet.conv_in(x), []
        with sdpa_kernel(SDPBackend.MATH):
            for block in unet.down_blocks:
                h, _ = block(hidden_states=h, temb=emb)
                feats.append(h)
            feats.append(unet.mid_block(h, emb))
        return feats
