"""Models vitune compresses: the embedded default (digits ViT), any timm ViT, and layer discovery."""
