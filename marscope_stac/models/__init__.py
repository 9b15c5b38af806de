"""Vision-language models.

Open_clip loading (hub, local folders, the bundled model), the packaged pretrained parts,
encoding images and texts. Nothing here knows geography.
"""
