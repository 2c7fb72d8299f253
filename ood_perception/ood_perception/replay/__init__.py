"""Rosbag2 replay evaluation: run recorded drives through the nodes' own pipeline objects.

``ood-perception replay`` reads rosbag2 recordings (sqlite3 or mcap, any of humble/jazzy/kilted)
in bag-time order, feeds camera + LiDAR to the very same :mod:`ood_perception.pipeline` objects
the ROS nodes use, writes the nodes' output topics to ``DIR/output.mcap`` with the input stamps,
computes metrics when labels exist and renders ``DIR/report.html``.

Modules: :mod:`.bag` (reading, salvage of damaged bags), :mod:`.topics` (topic mapping),
:mod:`.outbag` (output bag), :mod:`.engine` (the replay loop), :mod:`.report` (HTML report).
"""
