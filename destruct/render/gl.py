"""The beauty pass through pyrender, headless (EGL), one renderer reused across frames.

``PYOPENGL_PLATFORM=egl`` is set before pyrender is imported (Mesa llvmpipe on CPU machines,
the NVIDIA driver on GPU servers; pyrender reads ``EGL_DEVICE_ID`` to pick the GPU). All
pieces are one merged mesh per frame with three primitives (exterior, interior, rubble): three
draw calls whatever the piece count. Lighting: a sun with shadow mapping plus the sky as
ambient light; colours are the materials' scene-linear albedos as vertex colours.

The shaders are destruct's own (``shaders/``, loaded through pyrender's program cache):
pyrender's physically based shader spends most of a frame on llvmpipe in its 36-read shadow
filter; ours is the diffuse term with one comparing lookup (a 2x2 bilinear filter). At 2000
pieces and 1280x720 this halves the beauty's time; the images differ from pyrender's by the
small specular term of these rough materials and by sharper shadows.

The sun's shadow map covers the sphere around the moving pieces (``shadow_bounds``), not the
whole ground square: seen along the sun, a shadow lies over its caster, so nothing outside that
sphere is ever in shadow (the shader lights whatever falls outside the map). Its texels are
several times smaller than pyrender's default; it has about 0.8 texels per pixel of the frame's
width.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from destruct.errors import UserError
from destruct.render.scene import FrameMesh

#: The apt line for Debian 12 / Ubuntu: the GLVND EGL loader, Mesa's EGL vendor library and
#: its DRI drivers (llvmpipe).
APT_LINE = "sudo apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri"

SKY_COLOR = (0.62, 0.74, 0.90)  # display-referred background (written as is)
SKY_AMBIENT = (0.22, 0.25, 0.30)  # scene-linear sky light
SUN_COLOR = (1.0, 0.95, 0.86)
SUN_INTENSITY = 3.2
SUN_DIRECTION = (-0.45, -0.8, -0.4)  # direction the light travels (world)
GROUND_COLOR = (0.20, 0.19, 0.17)
SHADER_DIR = Path(__file__).with_name("shaders")
#: Fracture faces are darker (in the cracks, hardly lit) and rougher than the outside.
INTERIOR_SHADE = 0.7


def _import_pyrender():
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    try:
        import pyrender
    except ImportError as e:
        raise UserError(
            f"pyrender cannot load ({e}); headless rendering needs EGL: {APT_LINE} "
            "(or the NVIDIA driver on a GPU server)"
        ) from None
    return pyrender


def shadow_map_size(width: int) -> int:
    """Texels on a side of the sun's shadow map for frames ``width`` pixels wide: 0.8 per
    pixel, in steps of 256, at least 512 (1024 at 1280x720)."""
    return max(512, 256 * -(-int(0.8 * width) // 256))


def sun_light(radius: float | None = None, size: int | None = None):
    """The sun, whose shadow map our shader reads (:data:`SHADER_DIR`); with ``radius``, its
    orthographic shadow camera covers a square ``2 radius`` across (the casters' bounding sphere
    seen along the sun) and its depth spans from ``radius`` above the shadow camera's centre
    to ``3 radius`` below it (the ground beyond the casters), not 0.01-10 scene scales;
    ``size``: texels on a side (pyrender's 2048 by default).

    The shadow map compares depths in the sampler (``GL_COMPARE_REF_TO_TEXTURE``, linear
    filtering), so one lookup in the shader is a 2x2 bilinear percentage-closer filter: 8 %
    less of the beauty's time on llvmpipe than four texel reads and the filter in the shader."""
    pyrender = _import_pyrender()
    from OpenGL import GL

    class ShadowMap(pyrender.Texture):
        def _add_to_context(self):
            super()._add_to_context()
            GL.glBindTexture(self.tex_type, self._texid)
            GL.glTexParameteri(
                self.tex_type, GL.GL_TEXTURE_COMPARE_MODE, GL.GL_COMPARE_REF_TO_TEXTURE
            )
            GL.glTexParameteri(self.tex_type, GL.GL_TEXTURE_COMPARE_FUNC, GL.GL_LEQUAL)
            GL.glBindTexture(self.tex_type, 0)

    class Sun(pyrender.DirectionalLight):
        def _generate_shadow_texture(self, size=size):
            size = size or pyrender.constants.SHADOW_TEX_SZ
            linear = pyrender.Sampler(
                magFilter=GL.GL_LINEAR,
                minFilter=GL.GL_LINEAR,
                wrapS=GL.GL_CLAMP_TO_EDGE,
                wrapT=GL.GL_CLAMP_TO_EDGE,
            )
            self.shadow_texture = ShadowMap(
                width=size,
                height=size,
                source_channels="D",
                data_format=GL.GL_FLOAT,
                sampler=linear,
            )

        def _get_shadow_camera(self, scene_scale):
            if radius is None:
                return super()._get_shadow_camera(scene_scale)
            r = float(radius)
            return pyrender.OrthographicCamera(
                xmag=r,
                ymag=r,
                znear=max(scene_scale - r, 0.01 * scene_scale),
                zfar=scene_scale + 3.0 * r,
            )

    return Sun(color=SUN_COLOR, intensity=SUN_INTENSITY)


def _read_color(renderer, scene, flags) -> tuple[np.ndarray, None]:
    """pyrender's framebuffer read (``Renderer._read_main_framebuffer``) without the depth:
    the multisampled colour resolved and read as RGBA. The depth pass comes from the exact
    raster, and pyrender's depth readback and linearisation cost 10-25 ms of CPU a frame at
    1280x720; the colour is bit-identical."""
    from OpenGL import GL

    w, h = renderer._main_fb_dims
    GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, renderer._main_fb_ms)
    GL.glBindFramebuffer(GL.GL_DRAW_FRAMEBUFFER, renderer._main_fb)
    GL.glBlitFramebuffer(0, 0, w, h, 0, 0, w, h, GL.GL_COLOR_BUFFER_BIT, GL.GL_LINEAR)
    GL.glBindFramebuffer(GL.GL_READ_FRAMEBUFFER, renderer._main_fb)
    buf = GL.glReadPixels(0, 0, w, h, GL.GL_RGBA, GL.GL_UNSIGNED_BYTE)
    return np.flip(np.frombuffer(buf, np.uint8).reshape(h, w, 4), axis=0), None


def _fit_shadow_pass(inner, centre: np.ndarray, size: int) -> None:
    """Point pyrender's renderer ``inner`` at our shadow map: the sun's shadow camera centred on
    ``centre`` (pyrender centres it on the whole scene's, the ground square's) and a viewport
    of ``size`` texels (pyrender's is fixed at 2048). pyrender has no hooks for these: the
    renderer's own methods are wrapped on this instance."""
    from OpenGL import GL

    def light_matrices(scene, light_node, flags):
        pose = scene.get_pose(light_node).copy()
        s = scene.scale
        proj = light_node.light._get_shadow_camera(s).get_projection_matrix()
        pose[:3, 3] = centre + pose[:3, 2] * s  # s metres up the light from the centre
        return np.linalg.inv(pose), proj

    configure = inner._configure_shadow_mapping_viewport

    def viewport(light, flags):
        configure(light, flags)
        GL.glViewport(0, 0, size, size)

    inner._get_light_cam_matrices = light_matrices
    inner._configure_shadow_mapping_viewport = viewport


class GLRenderer:
    """Offscreen beauty renderer for one resolution; :meth:`close` frees the GL context."""

    def __init__(
        self,
        width: int,
        height: int,
        *,
        ground_half_size: float = 0.0,
        ground_center=(0.0, 0.0),
        shadow_bounds=None,
    ):
        """``shadow_bounds``: (lo, hi), the box that every piece and rubble bit stays inside
        over the shot; the sun's shadow map covers its bounding sphere. None: pyrender's shadow
        map of the whole scene, ground square included (coarse texels)."""
        pyrender = _import_pyrender()
        from pyrender.shader_program import ShaderProgramCache

        self._pr = pyrender
        try:
            self._renderer = pyrender.OffscreenRenderer(width, height)
        except Exception as e:  # noqa: BLE001 (PyOpenGL raises many types when EGL or a device is missing)
            dev = os.environ.get("EGL_DEVICE_ID")
            where = f" (EGL_DEVICE_ID={dev})" if dev else ""
            raise UserError(
                f"cannot open a headless OpenGL context through EGL{where}: {type(e).__name__}: {e}. "
                f"Install EGL and Mesa: {APT_LINE}; on a GPU server use the NVIDIA driver and pick "
                "the GPU with EGL_DEVICE_ID"
            ) from None
        # pyrender has no public hook for shaders: its renderer's program cache reads ours
        inner = self._renderer._renderer
        inner._program_cache = ShaderProgramCache(shader_dir=str(SHADER_DIR))
        if hasattr(inner, "_read_main_framebuffer"):
            inner._read_main_framebuffer = functools.partial(_read_color, inner)
        self.width, self.height = width, height
        self.scene = pyrender.Scene(bg_color=(*SKY_COLOR, 0.0), ambient_light=SKY_AMBIENT)
        self._materials = [
            pyrender.MetallicRoughnessMaterial(
                baseColorFactor=(1.0, 1.0, 1.0, 1.0), metallicFactor=0.0, roughnessFactor=r
            )
            for r in (0.75, 1.0, 1.0)
        ]
        if shadow_bounds is None:
            sun = sun_light()
        else:
            lo, hi = (np.asarray(b, dtype=np.float64) for b in shadow_bounds)
            size = shadow_map_size(width)
            # a few texels of margin: casters on the sphere's rim stay inside the map
            sun = sun_light(0.5 * float(np.linalg.norm(hi - lo)) * (1 + 4 / size), size)
            _fit_shadow_pass(inner, (lo + hi) / 2, size)
        from destruct.camera import look_at_rotation

        d = np.asarray(SUN_DIRECTION, dtype=np.float64)
        pose = np.eye(4)
        pose[:3, :3] = look_at_rotation(-d, np.zeros(3))  # light shines along its -z
        self.scene.add(sun, pose=pose)
        self._ground = None
        if ground_half_size > 0:
            s, (gx, gz) = ground_half_size, ground_center
            quad = np.array(
                [
                    [gx - s, 0, gz - s],
                    [gx - s, 0, gz + s],
                    [gx + s, 0, gz + s],
                    [gx + s, 0, gz - s],
                ],
                np.float32,
            )
            self._ground = {
                "positions": quad,
                "normals": np.tile([0.0, 1.0, 0.0], (4, 1)).astype(np.float32),
                "indices": np.array([[0, 1, 2], [0, 2, 3]], dtype=np.uint32),
                "material": pyrender.MetallicRoughnessMaterial(
                    baseColorFactor=(*GROUND_COLOR, 1.0), metallicFactor=0.0, roughnessFactor=1.0
                ),
            }
        self._camera = None
        self._mesh_node = None

    def render(
        self, mesh: FrameMesh, cam, near: float, far: float, *, plate: bool = False
    ) -> np.ndarray:
        """(h, w, 4) uint8: display-referred RGB (pyrender's gamma 2.2) and coverage alpha.

        With ``plate``, no sky and no ground: the pieces over black (premultiplied by the
        anti-aliased coverage in alpha), for compositing over the plate."""
        pr = self._pr
        if self._camera is not None:
            self.scene.remove_node(self._camera)
        self._camera = self.scene.add(
            pr.IntrinsicsCamera(cam.fx, cam.fy, cam.cx, cam.cy, znear=near, zfar=far),
            pose=cam.pose(),
        )
        if self._mesh_node is not None:
            self.scene.remove_node(self._mesh_node)
            self._mesh_node = None
        prims = []
        for (a, b), mat, shade in zip(mesh.groups[:2], self._materials, (1.0, INTERIOR_SHADE)):
            if b <= a:
                continue
            color = np.ones((b - a, 4), dtype=np.float32)
            color[:, :3] = mesh.tri_color[a:b] * shade
            prims.append(
                pr.Primitive(
                    positions=mesh.verts[3 * a : 3 * b],
                    normals=np.repeat(mesh.normals[a:b], 3, axis=0),
                    color_0=np.repeat(color, 3, axis=0),
                    material=mat,
                )
            )
        prims += self._rubble_primitives(mesh)
        # The ground is a primitive of the same mesh, drawn last: pyrender draws its mesh nodes
        # in set order, which changes from run to run, and where the ground and a piece touch
        # at equal depth the first drawn wins; one node keeps the beauty bit-identical.
        if self._ground is not None and not plate:
            prims.append(pr.Primitive(**self._ground))
        if prims:
            self._mesh_node = self.scene.add(pr.Mesh(prims))
        self.scene.bg_color = np.array((0.0, 0.0, 0.0, 0.0) if plate else (*SKY_COLOR, 0.0))
        flags = pr.RenderFlags.RGBA | pr.RenderFlags.SHADOWS_DIRECTIONAL
        color, _ = self._renderer.render(self.scene, flags=flags)
        return color

    def _rubble_primitives(self, mesh: FrameMesh) -> list:
        """The rubble as instanced rocks, one primitive per colour: a million bits are a million
        4x4 matrices, where a merged mesh would be 60 million vertices (which llvmpipe cannot
        draw: it crashed at 1M rubble, measured)."""
        if mesh.rubble_poses is None or not len(mesh.rubble_poses):
            return []
        from destruct.render.scene import ROCK_FACES, ROCK_VERTS, face_normals

        tri = ROCK_VERTS[ROCK_FACES]
        positions = tri.reshape(-1, 3).astype(np.float32)
        normals = np.repeat(face_normals(tri), 3, axis=0).astype(np.float32)
        colors, which = np.unique(mesh.rubble_colors, axis=0, return_inverse=True)
        prims = []
        for k, c in enumerate(colors):
            color = np.ones((len(positions), 4), dtype=np.float32)
            color[:, :3] = c * INTERIOR_SHADE
            prims.append(
                self._pr.Primitive(
                    positions=positions,
                    normals=normals,
                    color_0=color,
                    material=self._materials[2],
                    poses=mesh.rubble_poses[which.ravel() == k],
                )
            )
        return prims

    def close(self) -> None:
        self._renderer.delete()
