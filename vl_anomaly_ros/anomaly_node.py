"""The vl-anomaly ROS 2 node: camera images in; anomaly score, obstacle mask, overlay, obstacle list and
diagnostics out.

A lifecycle node (``rclpy.lifecycle.LifecycleNode``), because loading weights is slow and can fail:

* ``configure`` reads the read-only parameters, builds the predictor through the core's factory (weights are
  sha256-verified), runs one warm-up frame and creates the publishers. A failure (unknown model, corrupt weights,
  CUDA missing) leaves the node *unconfigured* with the reason in the log and in ``/diagnostics``.
* ``activate`` creates the subscriptions and starts the inference thread; ``deactivate`` removes them (frames
  still waiting are counted as dropped, reason ``shutdown``); ``cleanup`` frees the model.
* With ``autostart`` (default) the node configures and activates itself, so ``ros2 run`` / ``ros2 launch``
  need no lifecycle manager; ``autostart:=false`` waits for ``ros2 lifecycle set``.

Threads: the executor thread only validates headers and hands frames to a :class:`FrameQueue`; one model
thread (:class:`ModelWorker`) converts, runs :meth:`vl_anomaly.AnomalyPredictor.predict` (the same call as
``vl-anomaly predict``) and publishes. Frame accounting is in :class:`FrameStats`; nothing is lost without a count.

Stopping (SIGINT, SIGTERM): :func:`main` owns the signals (rclpy's handlers are not installed: they shut the ROS
context down from a thread of their own while the model thread may still be publishing a frame and the executor
thread a diagnostics message, and raise ``KeyboardInterrupt`` wherever the main thread happens to be). A signal
only sets a flag; the main loop then stops taking frames, waits at most ``shutdown_timeout_s`` for the frame in
work, ends the model thread, destroys the node and only then shuts the context down, logging each wait. Further
signals during that are logged and ignored. Exit code 0.

Topics (relative names, remap them): subscribes ``image`` (sensor_msgs/Image), ``image/compressed``
(optional), ``camera_info``; publishes ``~/anomaly_score`` (32FC1), ``~/obstacle_mask`` (mono8 0/255),
``~/overlay`` (bgr8), ``~/obstacle_markers`` (visualization_msgs/MarkerArray; :mod:`.markers`) — these four only
while subscribed — ``~/obstacles`` (vl_anomaly_msgs/ObstacleArray) and ``/diagnostics``. The input subscriptions
accept ``qos_overrides.<topic>.subscription.<policy>`` parameters (rclpy's QoS overriding).

Services: ``~/enable`` (std_srvs/SetBool) pauses inference without tearing down the model (frames are counted as
dropped, reason ``disabled``) and resumes it; ``~/set_vocabulary`` (vl_anomaly_msgs/SetVocabulary) changes a VL
model's known classes and anomaly prompts on the model thread between frames (text embeddings recomputed once;
the vocabulary in use is in the parameters ``vocabulary.known_classes`` / ``vocabulary.anomaly_prompts``, which
only the service changes); the lifecycle services of every lifecycle node.

Messages the core logs (``logging`` logger ``vl_anomaly``: an ONNX export or TensorRT engine build on first start)
go to the node's log; a TensorRT engine build is also shown in ``/diagnostics`` while configure waits for it.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data,
                       qos_profile_system_default)
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import SetBool
from visualization_msgs.msg import MarkerArray

from vl_anomaly.errors import VLAnomalyError
from vl_anomaly.factory import create_predictor
from vl_anomaly.io import score_png_range
from vl_anomaly.visualize import overlay as draw_overlay
from vl_anomaly_msgs.msg import ObstacleArray
from vl_anomaly_msgs.srv import SetVocabulary

from . import params as P
from .conversions import (RejectedFrame, array_to_image_msg, check_image_msg, compressed_msg_to_rgb,
                          image_msg_to_rgb, obstacle_array_msg, stamp_ns)
from .environment import ensure_venv_ament_prefix, use_shipped_fastdds_profile
from .frame_queue import FrameQueue
from .ground import PinholeCamera, horizon_row_frac, obstacle_ground_points
from .markers import obstacle_markers
from .model_worker import ModelWorker
from .shutdown import ShutdownSignals
from .stats import FrameStats, diagnostic_values, frame_status

NODE_NAME = "vl_anomaly"
#: parameters that show a VL model's vocabulary (changed only by ~/set_vocabulary) → key in the predictor's vocabulary
VOCABULARY_PARAMS = {"vocabulary.known_classes": "known_classes", "vocabulary.anomaly_prompts": "anomaly_prompts"}
VOCABULARY_DESCRIPTIONS = {
    "known_classes": "VL models: the known class names the prompts describe (read-only: change with ~/set_vocabulary)",
    "anomaly_prompts": "VL models: anomaly prompts of the CLIP crop score (read-only: change with ~/set_vocabulary)"}
#: a header stamp this much later than the previous frame's is counted as a jump (diagnostics events.stamp_jump)
STAMP_JUMP_S = 1.0


@dataclass
class _Frame:
    """A frame waiting for inference: the message, whether it is compressed, and its arrival time."""

    msg: object
    compressed: bool
    received_monotonic: float


class _CoreLogBridge(logging.Handler):
    """Forwards the core's ``logging`` records (logger ``vl_anomaly``) to the node's ROS logger while the node
    lives; an announced TensorRT engine build also becomes the node's ``configuring`` diagnostics message."""

    def __init__(self, node: "AnomalyNode") -> None:
        super().__init__(logging.INFO)
        self.node = node

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            logger = self.node.get_logger()
            (logger.error if record.levelno >= logging.ERROR else logger.warning if record.levelno >= logging.WARNING
             else logger.info)(message)
            if message.startswith("building TensorRT engine"):
                self.node.configuring = message
        except Exception:                                                   # noqa: BLE001 — logging must not raise
            self.handleError(record)


class AnomalyNode(LifecycleNode):
    """Road-anomaly segmentation node (see the module docstring for topics, threads and lifecycle)."""

    def __init__(self, node_name: str = NODE_NAME, shutdown_requested: threading.Event | None = None,
                 **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        for name, spec in P.PARAMS.items():
            self.declare_parameter(name, spec.default, P.descriptor(name))
        self.enabled = True              # ~/enable
        self.configuring = ""            # what a configure in progress waits for (diagnostics)
        self._runs_on: list[str] = []    # what executes the model (PyTorch, ONNX Runtime providers, TensorRT)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.stats = FrameStats()
        self.queue = FrameQueue(on_drop=lambda item, reason: self.stats.on_dropped(reason))
        self._apply_queue_params()
        self.predictor = None
        self._shipped_postprocess = None
        self.error = ""                  # last configure failure, shown in diagnostics
        self._camera: PinholeCamera | None = None
        self._camera_info_state = "none"             # diagnostics: none, ok WxH, invalid (K or size unset)
        self._last_stamp_ns: int | None = None
        self._warn_times: dict[str, float] = {}
        self._inputs: list = []
        self._outputs: dict[str, object] = {}
        # Set by main()'s signal handler; ends the wait for a model that is still loading.
        self.shutdown_requested = shutdown_requested or threading.Event()
        self.worker = ModelWorker(self.queue, self._handle_frame)
        self._active = False
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._enable_service = self.create_service(SetBool, "~/enable", self._on_enable)
        self._vocabulary_service = self.create_service(SetVocabulary, "~/set_vocabulary", self._on_set_vocabulary)
        self._setting_vocabulary = False          # the vocabulary.* parameters change only through the service
        self._vocabulary_summary = ""
        self._core_log = _CoreLogBridge(self)
        logging.getLogger("vl_anomaly").addHandler(self._core_log)
        logging.getLogger("vl_anomaly").setLevel(logging.INFO)
        # On the steady clock: with use_sim_time and no /clock (a paused bag) health reports must go on.
        self._diagnostics_timer = self.create_timer(self.get_parameter("diagnostics_period_s").value,
                                                    self.publish_diagnostics,
                                                    clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ------------------------------------------------------------------ parameters
    def param(self, name: str):
        return self.get_parameter(name).value

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        """Validate every changed parameter first; reject the whole set with the first reason."""
        for parameter in parameters:
            if parameter.name.startswith("qos_overrides."):      # declared read-only by rclpy, checked by it
                continue
            if parameter.name in VOCABULARY_PARAMS:
                if self._setting_vocabulary:
                    continue
                reason = f"{parameter.name} shows the vocabulary in use; change it with the ~/set_vocabulary service"
                self.get_logger().warning(f"rejected parameter {parameter.name}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
            reason = P.validate(parameter.name, parameter.value)
            if reason is not None:
                self.get_logger().warning(f"rejected parameter {parameter.name}={parameter.value!r}: {reason}")
                return SetParametersResult(successful=False, reason=reason)
        # Accepted: apply run-time changes after rclpy stores the values.
        names = {p.name for p in parameters}
        if self.predictor is not None and names & {"threshold", "min_obstacle_area_px", "drivable_only",
                                                   "drivable_margin_px"}:
            values = {p.name: p.value for p in parameters}
            self._apply_postprocess_params(values)
        if names & {"queue_policy", "queue_depth"}:
            values = {p.name: p.value for p in parameters}
            self.queue.configure(values.get("queue_policy", self.param("queue_policy")),
                                 values.get("queue_depth", self.param("queue_depth")))
        return SetParametersResult(successful=True)

    def _apply_queue_params(self) -> None:
        self.queue.configure(self.param("queue_policy"), self.param("queue_depth"))

    def _publish_vocabulary(self) -> None:
        """Mirror the predictor's vocabulary in the ``vocabulary.*`` parameters and the diagnostics summary."""
        vocabulary = self.predictor.vocabulary if self.predictor is not None else None
        if vocabulary is None:
            self._vocabulary_summary = ""
            return
        self._setting_vocabulary = True
        try:
            for name, key in VOCABULARY_PARAMS.items():
                if not self.has_parameter(name):
                    self.declare_parameter(name, Parameter.Type.STRING_ARRAY, ParameterDescriptor(
                        description=VOCABULARY_DESCRIPTIONS[key]))
                self.set_parameters([Parameter(name, Parameter.Type.STRING_ARRAY, list(vocabulary[key]))])
        finally:
            self._setting_vocabulary = False
        self._vocabulary_summary = (f"{len(vocabulary['known_classes'])} known classes, "
                                    f"{len(vocabulary['anomaly_prompts'])} anomaly prompts")

    async def _on_set_vocabulary(self, request: SetVocabulary.Request,
                                 response: SetVocabulary.Response) -> SetVocabulary.Response:
        """``~/set_vocabulary``: checked here, applied on the model thread between frames (frames arriving meanwhile
        wait in the queue and are counted as usual); the executor keeps serving while it runs."""
        predictor = self.predictor
        response.success = False
        if predictor is None:
            response.message = "the node is not configured (no model loaded)"
            return response
        if predictor.vocabulary is None:
            response.message = (f"model {predictor.name} is a plain segmenter: its classes are fixed by its weights "
                                "and it has no vocabulary to change; vocabularies belong to the VL models")
            return response
        known = list(request.known_classes) or None
        anomaly = [] if request.clear_anomaly_prompts else (list(request.anomaly_prompts) or None)
        done = Future()
        received = self.stats.snapshot()["received"]
        try:
            self.worker.submit(lambda: predictor.set_vocabulary(known, anomaly), "changing the vocabulary",
                               lambda result, error: done.set_result((result, error)))
        except Exception as exc:                                           # noqa: BLE001 — worker stopped
            response.message = str(exc)
            return response
        result, error = await done
        vocabulary = predictor.vocabulary
        response.known_classes, response.anomaly_prompts = vocabulary["known_classes"], vocabulary["anomaly_prompts"]
        if error is not None:
            response.message = str(error)
            self.get_logger().warning(f"~/set_vocabulary refused: {error}")
            return response
        self._publish_vocabulary()
        self.stats.on_event("vocabulary_changed")
        during = self.stats.snapshot()["received"] - received
        response.success, response.seconds = True, float(result["seconds"])
        response.message = (f"vocabulary changed in {result['seconds']:.2f} s: {self._vocabulary_summary}; "
                            f"{during} frames arrived meanwhile (queued, counted as usual)")
        self.get_logger().info(f"~/set_vocabulary: {response.message}; known classes {vocabulary['known_classes']}, "
                               f"anomaly prompts {vocabulary['anomaly_prompts']}")
        return response

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        """``~/enable``: false pauses inference (model kept; frames counted as dropped, reason ``disabled``),
        true resumes it. Frames already waiting are still processed."""
        changed = self.enabled != request.data
        self.enabled = bool(request.data)
        state = "enabled" if self.enabled else "disabled: frames are counted as dropped (disabled), model kept"
        if changed:
            self.get_logger().info(f"~/enable: {state}")
        response.success, response.message = True, state if changed else f"already {state}"
        return response

    def _apply_postprocess_params(self, overrides: dict | None = None) -> None:
        values = {name: self.param(name) for name in ("threshold", "min_obstacle_area_px", "drivable_only",
                                                      "drivable_margin_px")}
        values.update(overrides or {})
        self.predictor.postprocess_cfg = P.postprocess_from_params(
            self._shipped_postprocess, values["threshold"], values["min_obstacle_area_px"],
            bool(values["drivable_only"]), values["drivable_margin_px"])

    # ------------------------------------------------------------------ lifecycle
    def _load_predictor(self):
        """Runs on the model thread (:class:`ModelWorker`): threads setting, weights, warm-up."""
        from vl_anomaly.cpu import set_threads

        set_threads(self.param("threads"))       # its OpenMP workers are created with flush-to-zero on
        height, width = self.param("input_height"), self.param("input_width")
        if (height == 0) != (width == 0):
            raise VLAnomalyError(f"input_height and input_width must both be 0 (the weights' size) or both set; "
                                 f"got {height} x {width}")
        weights = self.param("weights")
        predictor = create_predictor(
            self.param("model"), weights=None if weights == "none" else weights, score=None if self.param("score") == "default" else self.param("score"),
            device=self.param("device"), input_size=(height, width) if height else None,
            backend=self.param("backend"), onnx_path=self.param("onnx_path") or None,
            precision=self.param("tensorrt_precision"), fusion=self.param("fusion_config") or None,
            clip_weights=self.param("clip_weights"), force_engine_update=self.param("force_engine_update"),
            provider_fallback=self.param("provider_fallback"))
        predictor.predict(np.zeros((64, 64, 3), np.uint8))                      # warm-up (allocations, oneDNN)
        return predictor

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        start = time.perf_counter()
        if self.param("backend") == "tensorrt":
            self.get_logger().info("backend tensorrt: the engine for this model, input size and GPU is built on the "
                                   "first start (minutes on embedded GPUs; announced when it starts) and cached")
        self.configuring = f"configuring: loading {self.param('model')}"
        try:
            self.predictor = self.worker.call(self._load_predictor, "loading the model",
                                              cancel=self.shutdown_requested.is_set)
            self._shipped_postprocess = self.predictor.postprocess_cfg     # the model's rules for its score
            self._apply_postprocess_params()
        except Exception as exc:                                                 # noqa: BLE001 — reported, not raised
            self.error = f"configure failed: {exc}"
            self.get_logger().error(self.error)
            self.predictor = None
            return TransitionCallbackReturn.FAILURE
        finally:
            self.configuring = ""
        self.error = ""
        depth = self.param("output_qos_depth")
        out_qos = QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
        self._outputs = {
            "score": self.create_publisher(Image, "~/anomaly_score", out_qos),
            "mask": self.create_publisher(Image, "~/obstacle_mask", out_qos),
            "overlay": self.create_publisher(Image, "~/overlay", out_qos),
            "obstacles": self.create_publisher(ObstacleArray, "~/obstacles", out_qos),
            "markers": self.create_publisher(MarkerArray, "~/obstacle_markers", out_qos),
        }
        desc = self.predictor.describe()
        self._runs_on = desc["runs_on"]
        self._publish_vocabulary()
        self.get_logger().info(
            f"configured in {time.perf_counter() - start:.1f} s: model {desc['model']}, score {desc['score']}, "
            f"threshold {desc['postprocess']['threshold']}, device {desc['device']}, "
            f"network input {desc['preprocess']['input_size']}, runs on {' '.join(desc['runs_on'])}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        qos = self._input_qos()
        image_topic = self.resolve_topic_name("image")
        overrides = QoSOverridingOptions.with_default_policies   # qos_overrides.<topic>.subscription.<policy>
        self._inputs = [
            self.create_subscription(Image, "image", lambda m: self._on_image(m, False), qos,
                                     qos_overriding_options=overrides()),
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos,
                                     qos_overriding_options=overrides()),
        ]
        if self.param("subscribe_compressed"):
            self._inputs.append(
                self.create_subscription(CompressedImage, "image/compressed", lambda m: self._on_image(m, True), qos,
                                         qos_overriding_options=overrides()))
        qos = self._inputs[0].qos_profile                          # as overridden
        self.queue.reopen()
        self.worker.enable_frames()
        self._active = True
        self.get_logger().info(f"active: subscribed {image_topic} ({self.param('input_qos')}: "
                               f"{qos.reliability.name.lower()}, depth {qos.depth}, queue policy "
                               f"{self.param('queue_policy')})")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_frames()
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        self._inputs = []
        self._active = False
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        for publisher in self._outputs.values():
            self.destroy_publisher(publisher)
        self._outputs = {}
        self.predictor = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_frames()
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        logging.getLogger("vl_anomaly").removeHandler(self._core_log)
        super().destroy_node()

    def _stop_frames(self, timeout: float | None = None) -> None:
        """Stop taking frames; waiting ones are counted as dropped (``shutdown``). Waits at most ``timeout``
        (default ``shutdown_timeout_s``) for the frame in work (still published or counted when it finishes)."""
        self.queue.close()
        timeout = self.param("shutdown_timeout_s") if timeout is None else timeout
        if not self.worker.disable_frames(timeout):
            self.get_logger().warning(f"the frame in work did not finish within {timeout:.1f} s "
                                      f"(model thread: {self.worker.doing}); going on without it")

    def stop_model_thread(self) -> bool:
        """Stop frames and end the model thread, each wait bounded by ``shutdown_timeout_s`` and logged.
        True if the thread ended in time."""
        start = time.monotonic()
        timeout = self.param("shutdown_timeout_s")
        self._stop_frames(timeout)
        doing = self.worker.doing
        ended = self.worker.stop(max(0.1, start + timeout - time.monotonic()))
        waited = time.monotonic() - start
        if ended:
            self.get_logger().info(f"model thread stopped in {waited:.2f} s")
        else:
            self.get_logger().error(f"model thread still busy ({doing}) after {waited:.1f} s; exiting without it")
        snap = self.stats.snapshot()
        self.get_logger().info(
            f"frames: received {snap['received']}, processed {snap['processed']}, dropped {snap['dropped_total']} "
            f"{snap['dropped']}, rejected {snap['rejected_total']} {snap['rejected']}, in flight {snap['in_flight']}")
        return ended

    def _input_qos(self) -> QoSProfile:
        depth = self.param("input_qos_depth")
        base = {"sensor_data": qos_profile_sensor_data, "system_default": qos_profile_system_default}.get(
            self.param("input_qos"))
        if base is None:      # "default": reliable, volatile, keep last
            return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                              reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
        return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=base.reliability,
                          durability=base.durability)

    # ------------------------------------------------------------------ executor thread
    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera = PinholeCamera.from_camera_info(msg)
        self._camera_info_state = "invalid (K or size unset)" if self._camera is None \
            else f"ok {self._camera.width}x{self._camera.height}"

    def _warn_at_most_every_second(self, key: str, message: str) -> None:
        """Log a warning unless one of the same ``key`` was logged less than a second ago (counts go to stats)."""
        now = time.monotonic()
        if now - self._warn_times.get(key, 0.0) > 1.0:
            self._warn_times[key] = now
            self.get_logger().warning(message)

    def _check_stamp(self, msg) -> None:
        """Count header stamps that go backwards or jump forward by more than ``STAMP_JUMP_S`` (bag loops, clock
        resets, a restarted driver). The frame is processed either way; ages and ``stale`` drops use the node
        clock (``use_sim_time`` follows /clock)."""
        stamp = stamp_ns(msg)
        last, self._last_stamp_ns = self._last_stamp_ns, stamp
        if last is None:
            return
        if stamp < last:
            self.stats.on_event("stamp_backwards")
            self._warn_at_most_every_second("stamp", f"header stamp went back by {(last - stamp) / 1e9:.3f} s")
        elif stamp - last > STAMP_JUMP_S * 1e9:
            self.stats.on_event("stamp_jump")
            self._warn_at_most_every_second("stamp", f"header stamp jumped forward by {(stamp - last) / 1e9:.3f} s")

    def _on_image(self, msg, compressed: bool) -> None:
        """Count, validate the header (cheap), hand over to the inference thread. Never raises."""
        self.stats.on_received()
        self._check_stamp(msg)
        if not self.enabled:
            self.stats.on_dropped("disabled")
            return
        try:
            if not compressed:
                check_image_msg(msg, self.param("max_input_pixels"))
        except RejectedFrame as exc:
            self._reject(exc.reason, str(exc))
            return
        self.queue.put(_Frame(msg, compressed, time.monotonic()))

    def _reject(self, reason: str, message: str) -> None:
        self.stats.on_rejected(reason, message)
        self._warn_at_most_every_second("rejection", f"rejected frame ({reason}): {message}")

    # ------------------------------------------------------------------ model thread
    def _handle_frame(self, frame: _Frame) -> None:
        """One frame on the model thread: processed, or rejected with a reason. Never raises."""
        try:
            self._process(frame)
        except RejectedFrame as exc:
            self._reject(exc.reason, str(exc))
        except VLAnomalyError as exc:
            self._reject("inference_error", str(exc))
        except Exception as exc:                                           # noqa: BLE001 — the node must not die
            if not self.context.ok():                                      # shut down under us: not the frame's fault
                self.stats.on_dropped("shutdown")
                return
            self._reject("internal_error", f"{type(exc).__name__}: {exc}")
            self.get_logger().error(traceback.format_exc())

    def _process(self, frame: _Frame) -> None:
        msg = frame.msg
        header = msg.header
        t0 = time.monotonic()
        max_age_ms = self.param("max_input_age_ms")
        if max_age_ms > 0:
            age_ms = (self.get_clock().now().nanoseconds - stamp_ns(msg)) / 1e6
            if age_ms > max_age_ms:
                self.stats.on_dropped("stale")
                return
        rgb = compressed_msg_to_rgb(msg) if frame.compressed else image_msg_to_rgb(msg, self.param("max_input_pixels"))
        t1 = time.monotonic()
        predictor = self.predictor
        camera = self._camera
        rules = predictor.postprocess_cfg
        if camera is not None and camera.fits(rgb.shape[1], rgb.shape[0]) and rules.min_size_rel_camera_height > 0:
            rules = replace(rules, horizon_row_frac=horizon_row_frac(camera, self.param("camera_pitch_deg")))
        prediction = predictor.predict(rgb, rules)        # the size rule's horizon from this camera's geometry
        t2 = time.monotonic()
        pubs = self._outputs
        # Images are converted and published only while someone subscribes (a planner, RViz, a recorder): a
        # 1080p 32FC1 map is 8.3 MB. The obstacle list is always published.
        if pubs["score"].get_subscription_count() > 0:
            pubs["score"].publish(array_to_image_msg(prediction.score_map, "32FC1", header))
        if pubs["mask"].get_subscription_count() > 0:
            mask = prediction.obstacle_mask.view(np.uint8) * np.uint8(255)
            pubs["mask"].publish(array_to_image_msg(mask, "mono8", header))
        ground = None
        height_m = self.param("camera_height_m")
        if camera is not None and height_m > 0:
            if camera.fits(rgb.shape[1], rgb.shape[0]):
                ground = obstacle_ground_points(prediction.obstacles, camera, rgb.shape[1], rgb.shape[0], height_m,
                                                self.param("camera_pitch_deg"))
            else:                                     # no positions from intrinsics of another image shape
                self.stats.on_event("camera_info_mismatch")
                self._warn_at_most_every_second(
                    "camera_info", f"camera_info is for {camera.width}x{camera.height}, the image is "
                                   f"{rgb.shape[1]}x{rgb.shape[0]} (another aspect ratio): no ground positions")
        pubs["obstacles"].publish(obstacle_array_msg(prediction.obstacles, header, predictor.score_name,
                                                     prediction.threshold, ground))
        if pubs["markers"].get_subscription_count() > 0:
            fitting = camera if camera is not None and camera.fits(rgb.shape[1], rgb.shape[0]) else None
            pubs["markers"].publish(obstacle_markers(prediction.obstacles, header, rgb.shape[1], rgb.shape[0],
                                                     fitting, ground))
        t3 = time.monotonic()
        stages = {"wait": (t0 - frame.received_monotonic) * 1e3, "convert": (t1 - t0) * 1e3,
                  "inference": (t2 - t1) * 1e3, "publish": (t3 - t2) * 1e3}
        if self.param("publish_overlay") and pubs["overlay"].get_subscription_count() > 0:
            lo, hi = score_png_range(prediction.score_map, predictor.spec.range)
            vis = draw_overlay(rgb, prediction.score_map, prediction.obstacle_mask, prediction.obstacles, lo, hi,
                               drivable=prediction.drivable)
            pubs["overlay"].publish(array_to_image_msg(cv2.cvtColor(vis, cv2.COLOR_RGB2BGR), "bgr8", header))
            stages["overlay"] = (time.monotonic() - t3) * 1e3
        now_ns = self.get_clock().now().nanoseconds
        self.stats.on_processed(latency_ms=(time.monotonic() - frame.received_monotonic) * 1e3,
                                age_ms=(now_ns - stamp_ns(msg)) / 1e6, stage_ms=stages)

    # ------------------------------------------------------------------ diagnostics
    def _score_name(self) -> str:
        """The score in use: the predictor's once configured (the model's default when the parameter is 'default')."""
        return self.predictor.score_name if self.predictor is not None else self.param("score")

    def publish_diagnostics(self) -> None:
        """One ``DiagnosticStatus`` named ``<node>: frames``: level, message and every counter as a key."""
        snap = self.stats.snapshot()
        level, message = frame_status(snap, configured=self.predictor is not None, error=self.error,
                                      active=self._active, no_input_warn_s=self.param("no_input_warn_s"),
                                      image_topic=self.resolve_topic_name("image"), enabled=self.enabled,
                                      configuring=self.configuring)
        values = diagnostic_values(snap, {"queue_policy": self.param("queue_policy"), "model": self.param("model"),
                                          "score": self._score_name(), "enabled": self.enabled,
                                          "runs_on": " ".join(self._runs_on),
                                          "vocabulary": self._vocabulary_summary,
                                          "camera_info": self._camera_info_state})
        status = DiagnosticStatus(level=getattr(DiagnosticStatus, level),
                                  name=f"{self.get_fully_qualified_name()}: frames", message=message,
                                  hardware_id=self.param("device"),
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics_pub.publish(array)


def _autostart(node: AnomalyNode) -> int:
    """Configure and activate (``autostart``). 0 on success or when a shutdown was requested meanwhile."""
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        if node.shutdown_requested.is_set():
            return 0
        node.get_logger().fatal(f"{node.error}; exiting")
        return 1
    if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
        node.get_logger().fatal("activation failed; exiting")
        return 1
    return 0


def main(args: list[str] | None = None, signals: ShutdownSignals | None = None) -> int:
    """Run the node until SIGINT/SIGTERM (console script ``anomaly_node``, through :mod:`.node_main`, which
    takes the signals before the heavy imports): ``anomaly_node --ros-args --params-file config/vl_anomaly.yaml``.

    Uses the shipped Fast DDS shared-memory profile unless ``FASTRTPS_DEFAULT_PROFILES_FILE`` is already set
    (without it, large best-effort images are silently dropped; docs/ros.md). SIGINT and SIGTERM stop the node
    cleanly in every state (module docstring) with exit code 0; 1 means configure or activate failed.
    """
    ensure_venv_ament_prefix()
    use_shipped_fastdds_profile()
    signals = signals or ShutdownSignals()
    rclpy.init(args=args if args is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    node = AnomalyNode(shutdown_requested=signals.requested)
    signals.logger = node.get_logger()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    code = 0
    try:
        if node.param("autostart"):
            code = _autostart(node)
        while code == 0 and not node.shutdown_requested.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:        # the context was shut down by someone else (e.g. a host process)
        pass
    finally:
        node.stop_model_thread()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
