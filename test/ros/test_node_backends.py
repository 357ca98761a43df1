"""The node on the ONNX Runtime backend over real ROS 2 transport: a VL-Anomaly model exported with
``vl-anomaly export`` (segmenter + aligner graph, CLIP crop encoder, text tables) runs in the node through the
``backend`` and ``onnx_path`` parameters and publishes the same fused score as the offline predictor on that
export; a plain segmenter's fused score follows the ``fusion_config`` parameter; a VL model's vocabulary changes at
run time through ``~/set_vocabulary`` (refused with the reason by plain segmenters and exports)."""

from __future__ import annotations

import numpy as np
import torch

from ros_harness import NODE_TEST_PARAMS, start_node
from sensor_msgs.msg import Image
from vl_anomaly import create_model, create_predictor, read_image
from vl_anomaly.deploy import export_vl_onnx
from vl_anomaly_ros.conversions import array_to_image_msg, image_msg_to_array


def test_vl_model_on_onnxruntime_in_the_node(probe, ros_log_dir, anomaly_val, tiny_vl_model, tiny_vl_config_dir,
                                             tmp_path, monkeypatch):
    monkeypatch.setenv("VL_ANOMALY_MODEL_CONFIGS", str(tiny_vl_config_dir))    # the node process registers it too
    torch.manual_seed(0)
    onnx_path = tmp_path / "vl_tiny.onnx"
    export_vl_onnx(create_model(tiny_vl_model, weights="untrained"), onnx_path, (256, 512), name=tiny_vl_model)

    name = "vl_anomaly_onnx"
    probe.subscribe(Image, f"/{name}/anomaly_score", 10)
    params = {**NODE_TEST_PARAMS, "model": tiny_vl_model, "weights": "untrained", "score": "fused",
              "backend": "onnxruntime", "onnx_path": str(onnx_path)}
    node = start_node(probe, name, params, ros_log_dir, remaps={"image": "/onnx/image"})
    try:
        rgb = read_image(anomaly_val / "RoadAnomaly21" / "images" / "1.png")
        pub = probe.publisher(Image, "/onnx/image", 10)
        msg = array_to_image_msg(rgb, "rgb8")
        msg.header.stamp.sec = 4242
        pub.publish(msg)
        assert probe.wait_for(lambda: probe.count(f"/{name}/anomaly_score") == 1, 90.0), node.log()
        published = image_msg_to_array(probe.messages(f"/{name}/anomaly_score")[0])
        runs_on = probe.wait_diagnostics(name, lambda v: "runs_on" in v, 10.0)["runs_on"]
        assert runs_on == "CPUExecutionProvider + CPUExecutionProvider", runs_on      # graph + CLIP graph
        from vl_anomaly_msgs.srv import SetVocabulary

        refused = _call(probe, probe.node.create_client(SetVocabulary, f"/{name}/set_vocabulary"),
                        SetVocabulary.Request(known_classes=["road"]))
        assert not refused.success and "fixed at export" in refused.message
    finally:
        assert node.stop() == 0, node.log()
    offline = create_predictor(tiny_vl_model, score="fused", backend="onnxruntime", onnx_path=onnx_path,
                               input_size=(256, 512)).score_image(rgb)[0]
    assert published.shape == rgb.shape[:2]
    np.testing.assert_allclose(published, offline, atol=1e-5)
    assert published.max() > 0.1


def test_fusion_config_parameter_gives_the_offline_fused_score(probe, ros_log_dir, anomaly_val, tmp_path):
    """A plain segmenter's ``fused`` score in the node, weights from the ``fusion_config`` parameter (a YAML of
    ``vl-anomaly calibrate``'s format): the published map equals ``create_predictor(..., fusion=that YAML)``."""
    from vl_anomaly.fusion import FusionCfg, SourceNorm

    fusion = FusionCfg({"msp": 0.4, "energy": 0.6}, {"msp": SourceNorm(0.0, 0.7), "energy": SourceNorm(-20.0, -4.0)})
    path = fusion.save(tmp_path / "fusion.yaml")
    name = "vl_anomaly_fused"
    probe.subscribe(Image, f"/{name}/anomaly_score", 10)
    params = {**NODE_TEST_PARAMS, "score": "fused", "fusion_config": str(path)}
    node = start_node(probe, name, params, ros_log_dir, remaps={"image": "/fused/image"})
    try:
        rgb = read_image(anomaly_val / "RoadObstacle21" / "images" / "1.webp")
        msg = array_to_image_msg(rgb, "rgb8")
        msg.header.stamp.sec = 4343
        probe.publisher(Image, "/fused/image", 10).publish(msg)
        assert probe.wait_for(lambda: probe.count(f"/{name}/anomaly_score") == 1, 90.0), node.log()
        published = image_msg_to_array(probe.messages(f"/{name}/anomaly_score")[0])
        runs_on = probe.wait_diagnostics(name, lambda v: "runs_on" in v, 10.0)["runs_on"]
        assert runs_on == "PyTorch", runs_on
        from vl_anomaly_msgs.srv import SetVocabulary

        refused = _call(probe, probe.node.create_client(SetVocabulary, f"/{name}/set_vocabulary"),
                        SetVocabulary.Request(known_classes=["road"]))
        assert not refused.success and "plain segmenter" in refused.message
    finally:
        assert node.stop() == 0, node.log()
    offline = create_predictor(score="fused", fusion=path, input_size=(256, 512)).score_image(rgb)[0]
    np.testing.assert_allclose(published, offline, atol=1e-6)
    assert 0.0 <= published.min() and published.max() <= 1.0


def _call(probe, client, request, timeout: float = 60.0):
    assert client.wait_for_service(10.0)
    future = client.call_async(request)
    assert probe.wait_for(lambda: future.done(), timeout)
    return future.result()


def test_vocabulary_changes_at_run_time(probe, ros_log_dir, anomaly_val, tiny_vl_model, tiny_vl_config_dir,
                                        monkeypatch):
    """~/set_vocabulary on a VL model: applied between frames, the vocabulary.* parameters and diagnostics follow,
    frames go on; the parameters cannot be set directly; a bad vocabulary changes nothing."""
    from rclpy.parameter import Parameter
    from rclpy.parameter_client import AsyncParameterClient

    from vl_anomaly_msgs.srv import SetVocabulary

    monkeypatch.setenv("VL_ANOMALY_MODEL_CONFIGS", str(tiny_vl_config_dir))
    name = "vl_anomaly_vocabulary"
    probe.subscribe(Image, f"/{name}/anomaly_score", 10)
    params = {**NODE_TEST_PARAMS, "model": tiny_vl_model, "weights": "untrained", "clip_weights": "none",
              "score": "fused"}
    node = start_node(probe, name, params, ros_log_dir, remaps={"image": "/vocabulary/image"})
    try:
        client = AsyncParameterClient(probe.node, name)
        assert client.wait_for_services(10.0)

        def vocabulary():
            future = client.get_parameters(["vocabulary.known_classes", "vocabulary.anomaly_prompts"])
            assert probe.wait_for(lambda: future.done(), 10.0)
            return [list(v.string_array_value) for v in future.result().values]

        known, anomaly = vocabulary()
        assert len(known) == 19 and known[0] == "road" and anomaly == []
        service = probe.node.create_client(SetVocabulary, f"/{name}/set_vocabulary")
        reply = _call(probe, service, SetVocabulary.Request(known_classes=["road", "car", "person"],
                                                           anomaly_prompts=["an animal on the road"]))
        assert reply.success, reply.message
        assert list(reply.known_classes) == ["road", "car", "person"] and reply.seconds >= 0
        assert "3 known classes, 1 anomaly prompts" in reply.message
        assert vocabulary() == [["road", "car", "person"], ["an animal on the road"]]
        values = probe.wait_diagnostics(name, lambda v: v.get("vocabulary") == "3 known classes, 1 anomaly prompts",
                                        10.0)
        assert values["events.vocabulary_changed"] == "1"
        rgb = read_image(anomaly_val / "RoadAnomaly21" / "images" / "1.png")
        probe.publisher(Image, "/vocabulary/image", 10).publish(array_to_image_msg(rgb, "rgb8"))
        assert probe.wait_for(lambda: probe.count(f"/{name}/anomaly_score") == 1, 60.0), node.log()
        bad = _call(probe, service, SetVocabulary.Request(known_classes=["road", "road"]))
        assert not bad.success and "duplicate" in bad.message and list(bad.known_classes) == ["road", "car", "person"]
        cleared = _call(probe, service, SetVocabulary.Request(clear_anomaly_prompts=True))
        assert cleared.success and list(cleared.anomaly_prompts) == []
        future = client.set_parameters([Parameter("vocabulary.known_classes", Parameter.Type.STRING_ARRAY, ["x"])])
        assert probe.wait_for(lambda: future.done(), 10.0)
        assert not future.result().results[0].successful
        assert "~/set_vocabulary" in future.result().results[0].reason
    finally:
        assert node.stop() == 0, node.log()
    assert "~/set_vocabulary: vocabulary changed" in node.log()
