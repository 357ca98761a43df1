"""vl_anomaly_ros: the thin ROS 2 layer over the ROS-free ``vl_anomaly`` core (model/).

:mod:`.anomaly_node` converts ``sensor_msgs/Image`` to arrays, calls :class:`vl_anomaly.AnomalyPredictor` and
publishes the results; it holds no model logic. See docs/ros.md.
"""
