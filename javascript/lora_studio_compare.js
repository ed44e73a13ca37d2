// LoRA Studio, Compare sub-tab: Generate (task id + A1111's progress bar) and "Send to txt2img".
// A1111 loads every file in javascript/ into the page; gradioApp(), randomId(), requestProgress(),
// updateInput() and switch_to_txt2img() come from A1111's own scripts.

/* global gradioApp, randomId, requestProgress, updateInput, switch_to_txt2img */

// Called by "Generate comparison" before the request goes to the server (like submit() in ui.js):
// the first input becomes a fresh task id, so /internal/progress can follow the job; the bar
// appears above the status line of the results column.
function lora_studio_compare_start() {
    var id = randomId();
    var status = gradioApp().getElementById('lora_studio_compare_status');
    requestProgress(id, status, null, function() {});

    var res = Array.from(arguments);
    res[0] = id;
    return res;
}

// "Send to txt2img": the selected cell into txt2img, so Generate there makes the same image.
// The negative prompt, seed, steps, CFG scale and size are set directly; then the cell's parameters
// go through A1111's own "Read generation parameters from prompt" button (#paste), which also sets
// the sampler and schedule type and leaves the plain prompt (with its <lora:name:w>) in the box.
// Without that button, the prompt is set directly. Either way the tab switches to txt2img.
function lora_studio_compare_send(prompt, negative, seed, settingsJson) {
    if (!prompt || !prompt.trim()) return [];
    var app = gradioApp();
    var set = function(selector, value) {
        var element = app.querySelector(selector);
        if (!element || value === undefined || value === null) return;
        element.value = value;
        updateInput(element);
    };
    var settings = {};
    try {
        settings = JSON.parse(settingsJson || '{}');
    } catch (e) {
        settings = {};
    }
    var hasSeed = seed !== undefined && seed !== null && Number(seed) >= 0;
    set('#txt2img_neg_prompt textarea', negative || '');
    if (hasSeed) set('#txt2img_seed input', String(seed));
    set('#txt2img_steps input[type=number]', settings.steps);
    set('#txt2img_cfg_scale input[type=number]', settings.cfg_scale);
    set('#txt2img_width input[type=number]', settings.width);
    set('#txt2img_height input[type=number]', settings.height);

    var paste = app.querySelector('#txt2img_tools #paste');
    if (paste && settings.sampler) {
        var pairs = ['Steps: ' + settings.steps, 'Sampler: ' + settings.sampler, 'Schedule type: Automatic',
            'CFG scale: ' + settings.cfg_scale];
        if (hasSeed) pairs.push('Seed: ' + seed);
        pairs.push('Size: ' + settings.width + 'x' + settings.height);
        var text = prompt.trim() + (negative ? '\nNegative prompt: ' + negative : '') + '\n' + pairs.join(', ');
        set('#txt2img_prompt textarea', text);
        paste.click(); // A1111 parses it on the server and switches to txt2img
        return [];
    }
    set('#txt2img_prompt textarea', prompt);
    switch_to_txt2img();
    return [];
}
