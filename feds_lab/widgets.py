"""Interactive explorers for JupyterLab (ipywidgets).

:class:`ChannelExplorer` shows, for a chosen image and latent channel of a codec: the channel's map,
its entropy in bits per element, and the reconstruction without it. Each part carries a CSS class
(``feds-info``, ``feds-latent``, ``feds-recon``, ``feds-recon-without``) so that a browser test can
find it.
"""

from __future__ import annotations

import io

import ipywidgets as W
import matplotlib
import numpy as np
import torch
from PIL import Image

from .analysis import LatentView, latent_view, reconstruct_without
from .coding import tensor_to_pil
from .evaluation.metrics import psnr


def _png(im: Image.Image, width: int = 256) -> bytes:
    if im.width != width:
        im = im.resize((width, max(1, round(im.height * width / im.width))), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def latent_map_image(y_c: torch.Tensor, cmap: str = "RdBu_r") -> Image.Image:
    """A (h, w) latent channel as a colour image, symmetric around 0."""
    a = y_c.detach().float().cpu().numpy()
    lim = max(float(np.abs(a).max()), 1e-6)
    rgba = matplotlib.colormaps[cmap]((a / lim + 1) / 2)
    return Image.fromarray((rgba[..., :3] * 255).astype(np.uint8), "RGB")


class ChannelExplorer:
    """Pick an image and a latent channel; see the map, its entropy, and the picture without it.

    >>> ChannelExplorer(teacher, eval_images(None, "all")).widget  # in a notebook cell
    """

    def __init__(self, model, images: list[tuple[str, torch.Tensor]], width: int = 256):
        if not images:
            raise ValueError("ChannelExplorer needs at least one image")
        self.model = model.eval()
        self.width = width
        self.views: dict[str, LatentView] = {n: latent_view(model, n, x if x.dim() == 4 else x.unsqueeze(0)) for n, x in images}
        first = next(iter(self.views.values()))
        m = first.y_hat.shape[1]
        self.image_picker = W.Dropdown(options=list(self.views), description="image")
        self.channel_picker = W.IntSlider(value=0, min=0, max=m - 1, description="channel", continuous_update=False)
        self.info = W.HTML()
        self.latent = W.Image(format="png")
        self.recon = W.Image(format="png")
        self.recon_without = W.Image(format="png")
        for w, cls in ((self.info, "feds-info"), (self.latent, "feds-latent"), (self.recon, "feds-recon"),
                       (self.recon_without, "feds-recon-without")):
            w.add_class(cls)
        self.image_picker.observe(lambda _: self.refresh(), names="value")
        self.channel_picker.observe(lambda _: self.refresh(), names="value")

        def captioned(title, img):
            return W.VBox([W.HTML(f"<b>{title}</b>"), img])

        self.widget = W.VBox([
            W.HBox([self.image_picker, self.channel_picker]),
            self.info,
            W.HBox([captioned("latent channel (y&#770;)", self.latent), captioned("reconstruction", self.recon),
                    captioned("without this channel", self.recon_without)]),
        ])
        self.widget.add_class("feds-channel-explorer")
        self.refresh()

    def state(self) -> dict:
        """What the explorer shows now, as numbers (for tests and for reading without a browser)."""
        v = self.views[self.image_picker.value]
        c = self.channel_picker.value
        without = reconstruct_without(self.model, v, [c])
        rank = int((v.entropy > v.entropy[c]).sum()) + 1
        return {
            "image": v.name, "channel": c, "entropy_bits": float(v.entropy[c]), "rank": rank,
            "channels": int(v.entropy.numel()), "psnr": psnr(v.x, v.x_hat), "psnr_without": psnr(v.x, without),
            "without": without,
        }

    def refresh(self) -> None:
        s = self.state()
        v = self.views[s["image"]]
        self.info.value = (
            f"<span class='feds-entropy'>H = {s['entropy_bits']:.3f} bits/element</span> · image <b>{s['image']}</b> · "
            f"channel {s['channel']} (rank {s['rank']} of {s['channels']} by entropy) · "
            f"PSNR {s['psnr']:.2f} dB, without this channel {s['psnr_without']:.2f} dB "
            f"({s['psnr_without'] - s['psnr']:+.2f} dB)"
        )
        self.latent.value = _png(latent_map_image(v.y_hat[0, s["channel"]]), self.width)
        self.recon.value = _png(tensor_to_pil(v.x_hat), self.width)
        self.recon_without.value = _png(tensor_to_pil(s["without"]), self.width)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
