#version 330 core
// destruct beauty pass, fragment stage: the diffuse term of a dielectric metallic-roughness
// material (F0 = 0.04) lit by the directional lights and the ambient sky, with a 2x2
// bilinear percentage-closer shadow lookup (one comparing lookup instead of pyrender's 36) and a
// slope-scaled bias measured in shadow-map texels. Output is display-referred like
// pyrender's own shader (gamma 2.2) so the beauty keeps its look.
struct DirectionalLight {
    vec3 color;
    float intensity;
    vec3 direction;
#ifdef DIRECTIONAL_LIGHT_SHADOWS
    sampler2DShadow shadow_map;
    mat4 light_matrix;
#endif
};

struct Material {
    vec4 base_color_factor;
};

uniform Material material;
uniform DirectionalLight directional_lights[MAX_DIRECTIONAL_LIGHTS];
uniform int n_directional_lights;
uniform vec3 ambient_light;

in vec3 world_position;
in vec3 world_normal;
in vec4 vertex_color;

out vec4 frag_color;

// (1 - F0) of the diffuse albedo, times (1 - F0) transmitted at the surface, over pi
const float DIFFUSE_SCALE = 0.96 * 0.96 / 3.14159265;

#ifdef DIRECTIONAL_LIGHT_SHADOWS
float lit_fraction(sampler2DShadow shadow_map, mat4 light_matrix, float nl)
{
    vec4 p = light_matrix * vec4(world_position, 1.0);
    vec3 c = p.xyz / p.w * 0.5 + 0.5;
    if (c.z > 1.0 || c.x < 0.0 || c.y < 0.0 || c.x > 1.0 || c.y > 1.0) {
        return 1.0;  // outside the shadow map: lit
    }
    vec2 size = vec2(textureSize(shadow_map, 0));
    // orthographic light: row lengths give metres per texel and depth units per metre
    float metres_per_texel = 2.0 / (length(vec3(light_matrix[0][0], light_matrix[1][0], light_matrix[2][0])) * size.x);
    float depth_per_metre = 0.5 * length(vec3(light_matrix[0][2], light_matrix[1][2], light_matrix[2][2]));
    float tan_slope = sqrt(max(1.0 - nl * nl, 0.0)) / max(nl, 0.1);
    float bias = metres_per_texel * (1.0 + min(2.0 * tan_slope, 8.0)) * depth_per_metre;
    float d = c.z - bias;
    // 2x2 bilinear percentage-closer filter: the sampler compares (GL_COMPARE_REF_TO_TEXTURE)
    return texture(shadow_map, vec3(c.xy, d));
}
#endif

void main()
{
    vec4 albedo = material.base_color_factor * vertex_color;
    vec3 n = normalize(world_normal);
    vec3 sun = vec3(0.0);
    for (int i = 0; i < n_directional_lights; i++) {
        float nl = max(dot(n, -normalize(directional_lights[i].direction)), 0.0);
        float lit = 1.0;
#ifdef DIRECTIONAL_LIGHT_SHADOWS
        if (nl > 0.0) {
            lit = lit_fraction(directional_lights[i].shadow_map, directional_lights[i].light_matrix, nl);
        }
#endif
        sun += directional_lights[i].color * directional_lights[i].intensity * nl * lit;
    }
    vec3 color = albedo.rgb * (ambient_light + DIFFUSE_SCALE * sun);
    frag_color = clamp(vec4(pow(color, vec3(1.0 / 2.2)), albedo.a), 0.0, 1.0);
}
