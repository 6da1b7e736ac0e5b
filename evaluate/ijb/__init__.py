"""IJB-B / IJB-C: 1:1 verification (TAR at FAR) and 1:N identification, as insightface and CVLFace run them.

Modules, one job each:
- protocol: the protocol files in their two layouts (insightface's text files, CVLFace's arrow folder).
- align: insightface's loose crops aligned to the 112x112 template from five landmarks.
- metrics: image features to template features, then 1:1 TAR at FAR and 1:N rank-k and TPIR.
- run: one model through the image pass and both metrics.

Importing this package imports none of them.
"""
