"""Rosbag2 replay evaluation: run recorded drives through the nodes' own pipeline objects.

``ood-perception replay`` reads rosbag2 recordings (sqlite3 or mcap, any of humble/jazzy/kilted)
in bag-time order, feeds camera + LiDAR to the very same :mod:`ood_perception.pipeline` objects
the ROS nodes use, writes the nodes' output topics to ``DIR/output/`` (a rosbag2 directory) with
the input stamps, computes metrics when labels exist and renders ``DIR/report.html``.

Modules: :mod:`.engine` (the replay loop), :mod:`.extrinsics` (``/tf_static`` or params),
:mod:`.labels` (which label map, checked against the model), :mod:`.params` (ROS params file),
:mod:`.run` (many bags, shards, merge), :mod:`.state` (per-bag accumulator state), :mod:`.report`
(HTML report). Bags are read and written by :mod:`ood_perception.data.bag_reader` and
:mod:`ood_perception.data.bag_output`.
"""
