#version 330 core
// destruct shadow-map pass: only the depth buffer matters.
out vec4 frag_color;

void main()
{
    frag_color = vec4(1.0);
}
