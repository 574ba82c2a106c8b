"""Keypoint (pose) helpers that are not the network: the heatmap codec (``decode``).

The network itself is ``micronet.pose_model`` (built from ``micronet.pose_config``); the metric is
pycocotools' COCOeval, never re-implemented here.
"""
