#version 330 core
// destruct beauty pass, vertex stage: world position, world normal and vertex colour.
// pyrender substitutes the *_LOC names with attribute locations (see destruct/render/gl.py).
layout(location = 0) in vec3 position;
#ifdef NORMAL_LOC
layout(location = NORMAL_LOC) in vec3 normal;
#endif
#ifdef COLOR_0_LOC
layout(location = COLOR_0_LOC) in vec4 color_0;
#endif
layout(location = INST_M_LOC) in mat4 inst_m;

uniform mat4 M;
uniform mat4 V;
uniform mat4 P;

out vec3 world_position;
out vec3 world_normal;
out vec4 vertex_color;

void main()
{
    // node poses are rigid and rubble instances add a uniform scale, so mat3(model) turns
    // normals too (the fragment stage normalises them)
    mat4 model = M * inst_m;
    vec4 w = model * vec4(position, 1.0);
    world_position = w.xyz;
    gl_Position = P * V * w;
#ifdef NORMAL_LOC
    world_normal = mat3(model) * normal;
#else
    world_normal = vec3(0.0, 1.0, 0.0);
#endif
#ifdef COLOR_0_LOC
    vertex_color = color_0;
#else
    vertex_color = vec4(1.0);
#endif
}
