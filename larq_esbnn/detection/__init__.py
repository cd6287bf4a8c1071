"""Binary object detection: SSD heads with ES / G on the zoo's backbones.

Importing this package registers the detectors (``ssd_resnet20``,
``es_ssd_resnet20``, ``ssdlite_reactnet_a``, ``es_ssdlite_reactnet_a``) in
:mod:`larq_esbnn.registry`. It sits above :mod:`larq_esbnn.models` and below
:mod:`larq_esbnn.report`, :mod:`larq_esbnn.export` and the CLI:

- :mod:`~larq_esbnn.detection.anchors`: anchors, box encoding, matching, NMS
- :mod:`~larq_esbnn.detection.ssd`: the detectors and :func:`detect`
- :mod:`~larq_esbnn.detection.data`: boxes on disk (CSV or one JSON per image) -> tf.data
- :mod:`~larq_esbnn.detection.train`: loss, training, mAP with pycocotools, the CLI
"""

from larq_esbnn.detection.ssd import (
    build_ssd,
    detect,
    es_ssd_resnet20,
    es_ssdlite_reactnet_a,
    ssd_resnet20,
    ssdlite_reactnet_a,
)

__all__ = ["build_ssd", "detect", "es_ssd_resnet20", "es_ssdlite_reactnet_a", "ssd_resnet20", "ssdlite_reactnet_a"]
