"""vl_anomaly_ros: the thin ROS 2 layer over the ROS-free ``vl_anomaly`` core (model/).

It converts ``sensor_msgs/Image`` to arrays, calls :class:`vl_anomaly.AnomalyPredictor` and publishes the
results; it holds no model logic. The node itself is built in the ROS 2 node issue.
"""
