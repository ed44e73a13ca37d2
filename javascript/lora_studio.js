// LoRA Studio: Start (task id + A1111's progress bar), the loss chart and live samples, Send to txt2img.
// A1111 loads every file in javascript/ into the page; gradioApp(), randomId(), requestProgress(),
// updateInput(), switch_to_txt2img() and opts come from A1111's own scripts.

/* global gradioApp, randomId, requestProgress, updateInput, switch_to_txt2img, opts, onUiLoaded */

// Called by the Start button before the request goes to the server (like submit() in ui.js):
// the first input is replaced by a fresh task id, so /internal/progress can follow the job.
// The bar goes right above the chart's status line (style.css keeps it in the flow there).
function lora_studio_start() {
    var id = randomId();
    var info = gradioApp().querySelector('#lora_studio_chart .lora-studio-chart-info');
    var gallery = gradioApp().getElementById('lora_studio_gallery');
    loraStudioChart.follow();
    requestProgress(id, info, gallery, function() {
        loraStudioChart.poll();
        lora_studio_refresh_lora_pages();
    });

    var res = Array.from(arguments);
    res[0] = id;
    return res;
}

// Dataset tab: Preprocess, Caption and Generate class images run in A1111's queue like Start; each
// shows A1111's progress bar right above its own result box (and class images a live preview).
function lora_studio_dataset_job(args, resultId, galleryId) {
    var id = randomId();
    var result = gradioApp().getElementById(resultId);
    var gallery = galleryId ? gradioApp().getElementById(galleryId) : null;
    if (result) requestProgress(id, result, gallery, function() {});
    var res = Array.from(args);
    res[0] = id;
    return res;
}

function lora_studio_dataset_preprocess() {
    return lora_studio_dataset_job(arguments, 'lora_studio_ds_preprocess_result', null);
}

function lora_studio_dataset_caption() {
    return lora_studio_dataset_job(arguments, 'lora_studio_ds_caption_result', null);
}

function lora_studio_dataset_class_images() {
    return lora_studio_dataset_job(arguments, 'lora_studio_ds_class_result', 'lora_studio_ds_class_gallery');
}

// After a run, redraw the Lora pages of txt2img's and img2img's extra networks, so the new
// LoRA's card is there without pressing their Refresh (the server has listed the file already).
// Same as extraNetworksControlRefreshOnClick() in A1111's extraNetworks.js.
function lora_studio_refresh_lora_pages() {
    ['txt2img', 'img2img'].forEach(function(tabname) {
        var button = gradioApp().getElementById(tabname + '_lora_extra_refresh_internal');
        if (button) button.dispatchEvent(new Event('click'));
    });
}

// "Send to txt2img": append `<lora:name:w> trigger` to txt2img's prompt and switch to that tab.
function lora_studio_send_to_txt2img(text) {
    var textarea = gradioApp().querySelector('#txt2img_prompt textarea');
    if (textarea && text && text.trim()) {
        var separator = (typeof opts !== 'undefined' && opts.extra_networks_add_text_separator) || ' ';
        var current = textarea.value.replace(/\s+$/, '');
        textarea.value = current ? current + separator + text.trim() : text.trim();
        updateInput(textarea);
    }
    switch_to_txt2img();
    return [];
}

var loraStudioChart = (function() {
    var STATUS_URL = './internal/lora-studio/status';
    var SAMPLE_URL = './internal/lora-studio/sample/';
    var timer = null;
    var shownRun = null;
    var shownSamples = 0;

    function root() {
        return gradioApp().getElementById('lora_studio_chart');
    }

    function visible() {
        var element = root();
        return element !== null && element.offsetParent !== null;
    }

    function schedule(ms) {
        clearTimeout(timer);
        timer = setTimeout(poll, ms);
    }

    function poll() {
        if (!visible()) {
            schedule(3000);
            return;
        }
        fetch(STATUS_URL, {credentials: 'same-origin'}).then(function(response) {
            return response.ok ? response.json() : null;
        }).then(function(status) {
            if (status) render(status);
            schedule(status && status.state === 'running' ? 2000 : 10000);
        }).catch(function() {
            schedule(10000);
        });
    }

    function formatEta(seconds) {
        seconds = Math.max(0, Math.round(seconds || 0));
        var h = Math.floor(seconds / 3600), m = Math.floor(seconds / 60) % 60, s = seconds % 60;
        var mm = (h ? String(m).padStart(2, '0') : String(m)) + ':' + String(s).padStart(2, '0');
        return h ? h + ':' + mm : mm;
    }

    function describe(status) {
        if (!status.run_id) return 'Loss chart: no training yet.';
        var text = status.name + ' — ' + status.state + ', step ' + status.step + '/' + status.total_steps;
        if (status.epoch) text += ', epoch ' + status.epoch;
        if (status.loss !== null && status.loss !== undefined) text += ', loss ' + Number(status.loss).toFixed(4);
        if (status.state === 'running' && status.eta_s) text += ', ETA ' + formatEta(status.eta_s);
        if (status.left_out && status.left_out.length) text += ', left out ' + status.left_out.length + ' file(s)';
        if (status.error) text += ' — ' + status.error;
        return text;
    }

    // The run list refreshes itself when a run starts (its first step: the folder exists by then) or ends.
    var runsShownFor = null;
    function refreshRunsWhenChanged(status) {
        var key = status.run_id + '/' + status.state + '/' + (status.step > 0);
        if (runsShownFor !== null && key !== runsShownFor) {
            var button = gradioApp().getElementById('lora_studio_runs_refresh');
            if (button) button.click();
        }
        runsShownFor = key;
    }

    function render(status) {
        var element = root();
        if (!element) return;
        refreshRunsWhenChanged(status);
        element.querySelector('.lora-studio-chart-info').textContent = describe(status);
        drawLoss(element.querySelector('canvas'), status.losses || [], status.total_steps || 0, status.val_losses || []);
        showSamples(status);
    }

    // Raw loss (faint) and its exponential moving average (bold), step on x, loss on y; the validation loss
    // (held-out images, fixed noise: comparable between epochs) in orange with a dot per evaluation.
    function drawLoss(canvas, losses, totalSteps, valLosses) {
        if (!canvas) return;
        var ctx = canvas.getContext('2d');
        var width = canvas.width, height = canvas.height, pad = 36;
        ctx.clearRect(0, 0, width, height);
        var style = getComputedStyle(canvas);
        var ink = style.color || '#888';
        ctx.strokeStyle = ink;
        ctx.fillStyle = ink;
        ctx.globalAlpha = 0.6;
        ctx.strokeRect(pad, 8, width - pad - 8, height - pad);
        ctx.globalAlpha = 1;
        if (losses.length === 0) return;
        var maxStep = Math.max(totalSteps, losses[losses.length - 1][0], 1);
        var values = losses.map(function(p) { return p[1]; });
        var all = values.concat(valLosses.map(function(p) { return p[1]; }));
        var low = Math.min.apply(null, all), high = Math.max.apply(null, all);
        if (high - low < 1e-9) {
            var margin = Math.max(Math.abs(high) * 0.1, 1e-3);
            high += margin;
            low -= margin;
        }
        var x = function(step) { return pad + (width - pad - 8) * step / maxStep; };
        var y = function(v) { return 8 + (height - pad) * (1 - (v - low) / (high - low)); };
        ctx.font = '10px sans-serif';
        ctx.fillText(high.toFixed(3), 2, 14);
        ctx.fillText(low.toFixed(3), 2, height - pad + 6);
        ctx.fillText('step ' + maxStep, width - 70, height - 10);
        line(ctx, losses, x, y, 0.35, 1);
        dots(ctx, losses, x, y, losses.length <= 50 ? 2.5 : 0);
        var ema = [], smooth = values[0];
        losses.forEach(function(p) {
            smooth = 0.9 * smooth + 0.1 * p[1];
            ema.push([p[0], smooth]);
        });
        line(ctx, ema, x, y, 1, 2);
        if (valLosses.length) {
            ctx.save();
            ctx.strokeStyle = ctx.fillStyle = '#e8710a';
            line(ctx, valLosses, x, y, 1, 2);
            dots(ctx, valLosses, x, y, 3);
            ctx.fillText('validation', width - 70, 20);
            ctx.restore();
        }
    }

    function line(ctx, points, x, y, alpha, widthPx) {
        ctx.globalAlpha = alpha;
        ctx.lineWidth = widthPx;
        ctx.beginPath();
        points.forEach(function(p, i) {
            if (i === 0) ctx.moveTo(x(p[0]), y(p[1])); else ctx.lineTo(x(p[0]), y(p[1]));
        });
        ctx.stroke();
        ctx.globalAlpha = 1;
    }

    // A dot per step while there are few (a single step draws no line).
    function dots(ctx, points, x, y, radius) {
        if (!radius) return;
        ctx.globalAlpha = 0.6;
        points.forEach(function(p) {
            ctx.beginPath();
            ctx.arc(x(p[0]), y(p[1]), radius, 0, 2 * Math.PI);
            ctx.fill();
        });
        ctx.globalAlpha = 1;
    }

    function showSamples(status) {
        var strip = gradioApp().getElementById('lora_studio_live_samples');
        if (!strip) return;
        var samples = status.samples || [];
        if (status.run_id !== shownRun) {
            strip.innerHTML = '';
            shownRun = status.run_id;
            shownSamples = 0;
        }
        for (var i = shownSamples; i < samples.length; i++) {
            var img = document.createElement('img');
            img.src = SAMPLE_URL + i + '?run=' + encodeURIComponent(status.run_id);
            img.title = 'step ' + samples[i][0];
            img.loading = 'lazy';
            strip.appendChild(img);
        }
        shownSamples = samples.length;
    }

    return {
        poll: poll,
        follow: function() { schedule(1500); }
    };
})();

onUiLoaded(function() {
    loraStudioChart.poll();
});
